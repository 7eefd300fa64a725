"""NeuroSurgeon 0.1.0's own Masking tests (``NeuroSurgeon/Masking/test/*.py`` in its wheel), run
against ours with their imports rewritten to ``neurosurgeon``, assertions unchanged.

0.1.0's tests draw weights from the global RNG without seeding it, and one holds only for most
draws: ``test_conv1d_use_mask`` asks that every output of a random 80%-pruned layer change, which
fails whenever some output channel keeps all its weights (for 0.1.0 itself on 10 of the first 40
seeds, for ours on 9). Each test therefore runs under ``torch.manual_seed(0)``.
"""

from __future__ import annotations

import pytest
import torch

from _wheel import wheel_test_names, wheel_tests

v0_masking = pytest.importorskip("NeuroSurgeon.Masking")

_FILES = {"test_contsparse.py": "contsparse_layer", "test_hardconcrete.py": "hardconcrete_layer",
          "test_magprune.py": "magprune_layer"}

pytestmark = pytest.mark.usefixtures("one_thread")

_OURS = {f: wheel_tests(v0_masking, f) for f in _FILES}
_V0 = {f: wheel_tests(v0_masking, f, target=f"NeuroSurgeon.Masking.{module}") for f, module in _FILES.items()}
_TESTS = wheel_test_names(_OURS)


def test_the_wheel_has_136_masking_tests_and_we_run_them_all():
    assert len(_TESTS) == 136


@pytest.mark.parametrize("filename, name", _TESTS, ids=lambda v: v)
def test_v0_masking_test_passes_against_ours(filename, name):
    torch.manual_seed(0)
    _OURS[filename][name]()


def test_the_seed_dependent_test_fails_for_the_original_on_some_draws_too():
    # Why the tests above are seeded: the failures are the test's, not a port's.
    outcomes = []
    for seed in range(4):
        torch.manual_seed(seed)
        try:
            _V0["test_magprune.py"]["test_conv1d_use_mask"]()
            outcomes.append(True)
        except AssertionError:
            outcomes.append(False)
    assert True in outcomes and False in outcomes
