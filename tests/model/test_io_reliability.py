"""Mask files survive every round trip bitwise, and a damaged file is a clear error that changes nothing."""

import pytest
import torch
import torch.nn as nn

import neurosurgeon as ns

ABLATIONS = ["none", "zero_ablate", "random_ablate", "randomly_sampled", "complement_sampled"]


def _net(strategy, key):
    torch.manual_seed(0)  # same base weights for every net
    net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    # magnitude pruning keeps 30%, so the subnetwork is small enough for complement_sampled
    hparams = {"prune_percentage": 0.7} if strategy == "magnitude_pruning" else {}
    ns.inject_masks(net, nn.Linear, strategy=strategy, key=key, **hparams)
    return net


def _train_a_little(net):
    """Give the masks a non-trivial subnetwork (about a third of the units) and a noise counter."""
    g = torch.Generator().manual_seed(1)
    for layer in ns.mask_layers(net).values():
        if hasattr(layer, "weight_mask_params"):
            with torch.no_grad():
                theta = layer.weight_mask_params
                theta.copy_(torch.where(torch.rand(theta.shape, generator=g) < 0.35, 1.0, -1.0))
    net.train()
    net(torch.randn(3, 12))  # hard concrete: advances noise_step


def _outputs(net, x):
    out = {}
    net.train()
    if any(hasattr(m, "noise_step") and m._strategy == "hard_concrete" for m in ns.mask_layers(net).values()):
        out["train"] = net(x).detach()  # hard-concrete noise is drawn from (key, noise_step)
    net.eval()
    for ablation in ABLATIONS:
        ns.set_ablation(net, ablation)
        out[ablation] = net(x).detach()
    ns.set_ablation(net, "none")
    return out


@pytest.mark.parametrize("strategy", ["continuous_sparsification", "hard_concrete", "magnitude_pruning"])
def test_save_load_reproduces_every_mode_bitwise_including_random_baselines(strategy, tmp_path):
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(2))
    src = _net(strategy, key=11)
    _train_a_little(src)
    path = tmp_path / "m.safetensors"
    ns.save_masks(src, path)
    expected = _outputs(src, x)
    dst = _net(strategy, key=99)  # another key: everything random must come from the file
    ns.load_masks(dst, path)
    got = _outputs(dst, x)
    assert expected.keys() == got.keys()
    for mode in expected:
        assert torch.equal(expected[mode], got[mode]), mode


def _saved(tmp_path):
    net = _net("continuous_sparsification", key=3)
    _train_a_little(net)
    path = tmp_path / "m.safetensors"
    ns.save_masks(net, path)
    return net, path


def _mask_state_unchanged(net, before):
    after = ns.mask_state(net)
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip_last_tensor_byte(data: bytes) -> bytes:
    b = bytearray(data)
    b[-3] ^= 0xFF  # inside the last tensor's bytes: the structure still parses, the checksum catches it
    return bytes(b)


@pytest.mark.parametrize("corrupt, message", [(_truncate, "not a readable safetensors file"),
                                              (_flip_last_tensor_byte, "corrupted")],
                         ids=["truncated", "flipped-byte"])
def test_corrupted_file_is_a_clear_error_and_changes_nothing(tmp_path, corrupt, message):
    _, path = _saved(tmp_path)
    path.write_bytes(corrupt(path.read_bytes()))
    fresh = _net("continuous_sparsification", key=5)
    before = ns.mask_state(fresh)
    with pytest.raises(ValueError, match=message):
        ns.load_masks(fresh, path)
    assert _mask_state_unchanged(fresh, before)


def test_garbage_and_missing_files_are_clear_errors(tmp_path):
    net = _net("continuous_sparsification", key=5)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        ns.load_masks(net, junk)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ns.load_masks(net, tmp_path / "absent.safetensors")


def test_masks_from_a_different_model_fail_listing_every_mismatch(tmp_path):
    _, path = _saved(tmp_path)
    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))
    ns.inject_masks(other, nn.Linear, key=1)
    before = ns.mask_state(other)
    with pytest.raises(ValueError) as err:
        ns.load_masks(other, path)
    msg = str(err.value)
    assert "0.weight_mask_params: shape (8, 12)" in msg and "2.weight_mask_params: shape (4, 8)" in msg
    assert _mask_state_unchanged(other, before)
