"""The benchmark workloads. Each ``wN(cfg)`` builds its contenders, times them interleaved and
returns a result dict: ``{"id", "title", "timings": {name: {"median_s", "times_s"}},
"ratios": [{"name", "value", "target", "met", "interval"}], "info": {...}}``; ``interval`` is the
ratio's 95% paired-bootstrap interval over the rounds (``_timing.ratio_interval``), None after one round.

Contenders: ``plain`` (plain torch: the floor), ``ours`` (neurosurgeon), ``orig`` (NeuroSurgeon
0.1.0 through its public API; skipped when it is not importable). A row with ``"guard": True`` is
one of the limits the library is held to (benchmarks/NOTES.md lists them); a row with
``"unit": "s"`` holds seconds, not a ratio.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys

import torch
import torch.nn as nn

import neurosurgeon as ns
from neurosurgeon import functional as F
from neurosurgeon.functional import random as nr
from neurosurgeon.functional import sampling
from neurosurgeon.functional.sampling import proposals
from neurosurgeon.functional.magnitude import num_pruned

from ._timing import interleaved, ratio, ratio_interval

FULL = dict(
    smoke=False, d_in=768, d_out=3072, tokens=1024, n_masks=64, density=0.1, mag_shape=(21000, 4000),
    gpt2=dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024),
    gpt2_batch=(2, 256), gpt2_batch_default=(4, 256), baselines=50, baseline_batch=(16, 32), baseline_chunk=2, orig_baselines=5,
    w2_batches=10, repeats=dict(w1=61, w2=31, w3=5, w4=3, w5=15, w5_default=14, w6=5, w7=5, w7_layer=21), compile_backend="inductor", warmup=1,
    cold_start_processes=3, circuit_batch=(8, 64), circuits=32, circuit_chunk=None,
    circuit_repeats=dict(train=7, forward=15, evaluate=3),
)
SMOKE = dict(
    smoke=True, d_in=16, d_out=32, tokens=8, n_masks=4, density=0.1, mag_shape=(64, 32),
    gpt2=dict(n_layer=2, n_embd=32, n_head=2, vocab_size=101, n_positions=64),
    gpt2_batch=(2, 8), gpt2_batch_default=(4, 8), baselines=3, baseline_batch=(2, 8), baseline_chunk=2, orig_baselines=2,
    w2_batches=2, repeats=dict(w1=1, w2=1, w3=1, w4=1, w5=1, w5_default=1, w6=1, w7=1, w7_layer=1), compile_backend="eager", warmup=0,
    cold_start_processes=1, circuit_batch=(2, 8), circuits=3, circuit_chunk=None,
    circuit_repeats=dict(train=1, forward=1, evaluate=1),
)


def original():
    """NeuroSurgeon 0.1.0's modules, or None when it is not installed (or fails to import)."""
    try:
        from NeuroSurgeon.Masking import contsparse_layer, hardconcrete_layer, magprune_layer
        from NeuroSurgeon.Models import circuit_model, model_configs
    except Exception:  # pragma: no cover - depends on the environment
        return None
    return dict(CS=contsparse_layer.ContSparseLinear, HC=hardconcrete_layer.HardConcreteLinear,
                MP=magprune_layer.MagPruneLinear, CircuitModel=circuit_model.CircuitModel,
                CircuitConfig=model_configs.CircuitConfig)


def _ratio_row(name, timings, num, den, target=None, *, higher_is_better=False, scale=1.0, guard=False):
    text = (">= " if higher_is_better else "<= ") + f"{target:g}" if target else None
    r = ratio(timings, num, den)
    if r is None:
        return {"name": name, "value": None, "target": text, "met": None, "interval": None, "guard": guard}
    r *= scale
    met = None
    if target is not None:
        met = r >= target if higher_is_better else r <= target
    ci = ratio_interval(timings, num, den)
    return {"name": name, "value": r, "target": text, "met": met,
            "interval": None if ci is None else [v * scale for v in ci], "guard": guard}


def _subnetwork_theta(shape, density, generator_seed=0):
    """Mask parameters whose hard mask keeps ``density`` of the units: +1 there, -1 elsewhere."""
    g = torch.Generator().manual_seed(generator_seed)
    return torch.where(torch.rand(shape, generator=g) < density, 1.0, -1.0)


def _set_theta(layer, theta):
    with torch.no_grad():
        layer.weight_mask_params.copy_(theta.reshape(layer.weight_mask_params.shape))


def _ready(steps) -> None:
    """Two calls of each step: a warm step is what the ratios compare; the first call of a fresh
    process is measured apart (workload 8)."""
    for _ in range(2):
        for step in steps.values():
            step()


# -- workload 1 and 7a: masked Linear train step ------------------------------------------------------
def _linear_step(layer, x, gy):
    params = [p for p in layer.parameters() if p.requires_grad]

    def step():
        for p in params:
            p.grad = None
        x.grad = None
        layer(x).backward(gy)

    return step


def _masked_linears(cfg, orig):
    torch.manual_seed(0)
    base = nn.Linear(cfg["d_in"], cfg["d_out"])
    # plain_twin: an identical plain layer, timed like every contender; twin / plain is the
    # noise floor of these ratios on this machine.
    layers = {"plain": copy.deepcopy(base), "plain_twin": copy.deepcopy(base)}

    def frozen(layer):
        layer.weight.requires_grad_(False)
        layer.bias.requires_grad_(False)
        layer.train(True)
        return layer

    layers["ours_cs"] = frozen(ns.ContSparseLinear.from_layer(copy.deepcopy(base), key=0))
    layers["ours_hc"] = frozen(ns.HardConcreteLinear.from_layer(copy.deepcopy(base), key=0))
    if orig is not None:
        layers["orig_cs"] = frozen(orig["CS"].from_layer(copy.deepcopy(base)))
        layers["orig_hc"] = frozen(orig["HC"].from_layer(copy.deepcopy(base)))
    return layers


def _compiled_hc_step(layer, x, gy, backend):
    """The hard-concrete step as a user compiles it: the layer's forward under
    ``torch.compile(fullgraph=True)`` (noise, gate, W * z and the GEMM in one graph, its backward
    compiled with it), and the noise step advanced by hand, since a compiled forward mutates nothing."""
    layer.forward = torch.compile(layer.forward, backend=backend, fullgraph=True)
    step = _linear_step(layer, x, gy)

    def run():
        step()
        with torch.no_grad():
            layer.noise_step.add_(1)

    return run


def _hc_gate_alone(layer):
    """What an eager hard-concrete step adds to the plain step's GEMMs: the noise, the gate and
    W * z (the eager core), forward and backward, without the layer's GEMMs."""
    gw = torch.randn_like(layer.weight)

    def step():
        layer.weight_mask_params.grad = None
        layer.masked_parameters().weight.backward(gw)

    return step


def w1(cfg, orig):
    layers = _masked_linears(cfg, orig)
    x = torch.randn(cfg["tokens"], cfg["d_in"], requires_grad=True)
    gy = torch.randn(cfg["tokens"], cfg["d_out"])
    steps = {n: _linear_step(layer, x, gy) for n, layer in layers.items()}
    steps["ours_hc_compiled"] = _compiled_hc_step(copy.deepcopy(layers["ours_hc"]), x, gy, cfg["compile_backend"])
    _ready(steps)  # builds the compiled step too, before any timing
    steps["floor_hc_gate"] = _hc_gate_alone(layers["ours_hc"])
    t = interleaved(steps, repeats=cfg["repeats"]["w1"], warmup=max(1, cfg["warmup"]))
    rows = [
        _ratio_row("CS step / plain Linear step (ours)", t, "ours_cs", "plain", 1.06, guard=True),
        _ratio_row("HC step, eager / plain Linear step (ours)", t, "ours_hc", "plain", 1.40, guard=True),
        _ratio_row("HC step, the layer's forward under torch.compile(fullgraph=True) / plain Linear step (ours)", t,
                   "ours_hc_compiled", "plain"),
        _ratio_row("noise floor: identical plain layer / plain Linear step", t, "plain_twin", "plain"),
        _ratio_row("floor: eager HC gate alone (noise, gate, W * z: forward and backward, no GEMM) / plain Linear step",
                   t, "floor_hc_gate", "plain"),
        _ratio_row("CS step / plain Linear step (original)", t, "orig_cs", "plain"),
        _ratio_row("HC step / plain Linear step (original)", t, "orig_hc", "plain"),
    ]
    return {"id": 1, "title": "masked Linear train step (fwd + bwd to mask params and input), base frozen",
            "timings": t, "ratios": rows, "info": {"shape": f"x ({cfg['tokens']}, {cfg['d_in']}) -> {cfg['d_out']}",
                                                  "compile_backend": cfg["compile_backend"]}}


# -- workload 2: eval forward with a hard mask ----------------------------------------------------------
def w2(cfg, orig):
    torch.manual_seed(0)
    base = nn.Linear(cfg["d_in"], cfg["d_out"])
    theta = _subnetwork_theta((cfg["d_out"], cfg["d_in"]), 0.5)
    layers = {"plain": copy.deepcopy(base).eval(), "plain_twin": copy.deepcopy(base).eval()}
    ours = ns.ContSparseLinear.from_layer(copy.deepcopy(base), key=0)
    _set_theta(ours, theta)
    layers["ours"] = ours.eval()
    if orig is not None:
        o = orig["CS"].from_layer(copy.deepcopy(base))
        _set_theta(o, theta)
        o.train(False)
        layers["orig"] = o
    layers["ours_cached"] = copy.deepcopy(ours)
    # Magnitude pruning: its hard mask is a selection over |W|; ours re-verifies last call's
    # threshold in a few streaming passes instead of selecting again (functional/magnitude.py).
    layers["ours_mag"] = ns.MagPruneLinear.from_layer(copy.deepcopy(base), prune_percentage=0.5, key=0).eval()
    if orig is not None:
        layers["orig_mag"] = orig["MP"].from_layer(copy.deepcopy(base), prune_percentage=0.5)
        layers["orig_mag"].train(False)
    x = torch.randn(cfg["tokens"], cfg["d_in"])
    n_batches = cfg["w2_batches"]

    def fwd(name, layer):
        # One evaluation loop over n_batches batches; ``ours_cached`` runs it inside cached_masks().
        def run():
            with torch.no_grad(), (ns.cached_masks() if name == "ours_cached" else contextlib.nullcontext()):
                for _ in range(n_batches):
                    layer(x)
        return run

    t = interleaved({n: fwd(n, layer) for n, layer in layers.items()}, repeats=cfg["repeats"]["w2"], warmup=cfg["warmup"])
    rows = [_ratio_row("eval forward / plain Linear (ours, default: masks recomputed every call)", t, "ours", "plain", 1.08,
                       guard=True),
            _ratio_row(f"eval forward / plain Linear (ours, cached_masks(), {n_batches} batches)", t, "ours_cached",
                       "plain", 1.02, guard=True),
            _ratio_row("noise floor: identical plain layer / plain Linear", t, "plain_twin", "plain"),
            _ratio_row("eval forward / plain Linear (original)", t, "orig", "plain"),
            _ratio_row("magnitude pruning (50%) eval forward / plain Linear (ours)", t, "ours_mag", "plain"),
            _ratio_row("magnitude pruning (50%) eval forward / plain Linear (original)", t, "orig_mag", "plain")]
    return {"id": 2, "title": "eval-mode forward with a hard mask (continuous sparsification; magnitude pruning)",
            "timings": t,
            "ratios": rows, "info": {"shape": f"x ({cfg['tokens']}, {cfg['d_in']}) -> {cfg['d_out']}",
                                        "batches_per_timed_loop": n_batches}}


# -- workload 3: K sampled masks ---------------------------------------------------------------------
def _plain_sampled(h, k, complement):
    """Plain torch, global RNG: randperm over the eligible units (the obvious eager baseline)."""
    flat = h.reshape(-1)
    eligible = (flat == 0).nonzero().squeeze(1) if complement else None
    n = flat.numel()
    m = eligible.numel() if complement else n
    out = torch.ones_like(flat)
    pick = torch.randperm(m)[:k]
    out[eligible[pick] if complement else pick] = 0
    return out.reshape(h.shape)


def _words_read(n: int, m: int, k: int) -> int:
    """The words the exact-k sampler reads for k zeros among m eligible units of n (it draws the
    smaller side): its first read, the unordered prefix and the window expected after it."""
    return sampling._first_draws(n, m, sampling._drawn(k, m)[1])[1]


def _scattered(key, draws: int, k: int, n: int) -> torch.Tensor:
    """The words the sampler reads (``draws``) mapped to units, and k of them scattered into a bool
    table (n + 1 entries: a rejected draw proposes n): the least an exact-k sampler does."""
    return torch.zeros(n + 1, dtype=torch.bool).index_fill_(0, proposals(key, draws, n)[:k], True)


def _words_and_writes(keys, draws: int, k: int, h, layer=None, x=None):
    """The least an exact-k sampler does per key: make the words (those this one reads), scatter
    k units into a bool table and write the mask once from it, into a fresh batch (as a vmapped
    call returns it); with ``layer``, each mask is applied as the module path does: W * mask and
    the forward."""
    out = torch.empty(len(keys), *h.shape, dtype=h.dtype)
    with torch.no_grad():
        for i, key in enumerate(keys):
            out[i].view(-1).copy_(_scattered(key, draws, k, h.numel())[:-1].view(torch.uint8))
            if layer is not None:
                torch.nn.functional.linear(x, layer.weight * out[i], layer.bias)
    return out


def w3(cfg, orig):
    torch.manual_seed(0)
    d_in, d_out, K = cfg["d_in"], cfg["d_out"], cfg["n_masks"]
    base = nn.Linear(d_in, d_out)
    theta = _subnetwork_theta((d_out, d_in), cfg["density"])
    h = (theta > 0).to(torch.float32)
    k = int(h.sum())
    keys = nr.split(nr.key(0), K)
    x = torch.randn(1, d_in)
    timings, rows = {}, []
    for ablation in ("complement_sampled", "randomly_sampled"):
        mask_fn = F.complement_sampled_mask if ablation == "complement_sampled" else F.randomly_sampled_mask
        batched = torch.func.vmap(lambda key: mask_fn(key, h))
        ours = ns.ContSparseLinear.from_layer(copy.deepcopy(base), ablation=ablation, key=0)
        _set_theta(ours, theta)
        ours.eval()
        contenders = {
            "plain_randperm_loop": lambda a=ablation: [_plain_sampled(h, k, a == "complement_sampled") for _ in range(K)],
            "ours_vmap": lambda: batched(keys),
        }

        def module_loop(layer):
            def run():
                with torch.no_grad():
                    for _ in range(K):
                        layer.force_resample = True
                        layer(x)
            return run

        contenders["ours_module_loop"] = module_loop(ours)
        # the floor the sampler is judged against: all n words of the key's stream, per key
        contenders["floor_words"] = lambda: [proposals(key, h.numel(), h.numel()) for key in keys]
        m = h.numel() - k if ablation == "complement_sampled" else h.numel()
        draws = _words_read(h.numel(), m, k)
        contenders["floor_needed_words"] = lambda d=draws: [proposals(key, d, h.numel()) for key in keys]
        # the limit: those words, a scatter of k units and one pass writing each mask (+ applying it)
        contenders["floor_words_and_write"] = lambda d=draws: _words_and_writes(keys, d, k, h)
        contenders["floor_words_write_apply"] = lambda d=draws: _words_and_writes(keys, d, k, h, base, x)
        if orig is not None:
            o = orig["CS"].from_layer(copy.deepcopy(base), ablation=ablation)
            _set_theta(o, theta)
            o.train(False)
            contenders["orig_module_loop"] = module_loop(o)
        t = interleaved(contenders, repeats=cfg["repeats"]["w3"], warmup=cfg["warmup"])
        short = "CS" if ablation == "complement_sampled" else "RS"
        for name, v in t.items():
            timings[f"{short}:{name}"] = v
        rows += [
            _ratio_row(f"{ablation}: original loop / ours vmapped (speed-up)", timings, f"{short}:orig_module_loop",
                       f"{short}:ours_vmap", 25 if short == "CS" else None, higher_is_better=True, guard=short == "CS"),
            _ratio_row(f"{ablation}: original loop / ours module loop (speed-up)", timings,
                       f"{short}:orig_module_loop", f"{short}:ours_module_loop", higher_is_better=True),
            _ratio_row(f"{ablation}: floor: original loop / generating all n words (speed-up)", timings,
                       f"{short}:orig_module_loop", f"{short}:floor_words", higher_is_better=True),
            _ratio_row(f"{ablation}: floor: original loop / the words this sampler reads, eager (speed-up)", timings,
                       f"{short}:orig_module_loop", f"{short}:floor_needed_words", higher_is_better=True),
            _ratio_row(f"{ablation}: floor: original loop / those words, a scatter of k units, one write of each "
                       "fresh mask (speed-up)", timings, f"{short}:orig_module_loop", f"{short}:floor_words_and_write",
                       higher_is_better=True),
            _ratio_row(f"{ablation}: floor: original loop / those words, the scatter and write, W * mask and the forward "
                       "(speed-up)", timings, f"{short}:orig_module_loop", f"{short}:floor_words_write_apply",
                       higher_is_better=True),
            _ratio_row(f"{ablation}: ours vmapped / plain randperm loop", timings, f"{short}:ours_vmap",
                       f"{short}:plain_randperm_loop"),
        ]
    per_mask = {n: v["median_s"] / K * 1e3 for n, v in timings.items()}
    return {"id": 3, "title": f"{K} sampled masks of a {d_out}x{d_in} layer, {cfg['density']:.0%}-dense subnetwork",
            "timings": timings, "ratios": rows, "info": {"k": k, "ms_per_mask": per_mask}}


# -- workload 4: magnitude mask of a huge weight ----------------------------------------------------
def w4(cfg, orig):
    torch.manual_seed(0)
    w = torch.randn(cfg["mag_shape"])
    n = w.numel()
    k = num_pruned(n, 0.2)
    flat = w.reshape(-1)
    t = interleaved({"plain_kthvalue": lambda: torch.kthvalue(flat, k),
                     "ours": lambda: F.magnitude_mask(w, prune_percentage=0.2)}, repeats=cfg["repeats"]["w4"], warmup=cfg["warmup"])
    info = {"numel": n}
    if orig is not None:
        lin = nn.Linear(cfg["mag_shape"][1], cfg["mag_shape"][0], bias=False)
        with torch.no_grad():
            lin.weight.copy_(w)
        try:
            o = orig["MP"].from_layer(lin, prune_percentage=0.2)
            o.train(False)
            with torch.no_grad():
                o(torch.randn(1, cfg["mag_shape"][1]))
            info["original"] = "ran"
        except Exception as e:  # the original uses torch.quantile, which refuses > 16M entries
            info["original"] = f"raises {type(e).__name__}: {str(e)[:120]}"
        del lin
    rows = [_ratio_row("magnitude mask / one torch.kthvalue", t, "ours", "plain_kthvalue", 2)]
    return {"id": 4, "title": f"magnitude mask of a {n / 1e6:.0f}M-entry weight" if n > 1e6 else
            f"magnitude mask of a {n}-entry weight", "timings": t, "ratios": rows, "info": info}


# -- workload 5: GPT-2 train step ----------------------------------------------------------------------
def _gpt2(cfg, **config_overrides):
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**cfg["gpt2"], **config_overrides))
    targets = [name for name, m in model.named_modules() if isinstance(m, Conv1D)]
    return model, targets


def _gpt2_input(cfg, batch_key="gpt2_batch"):
    g = torch.Generator().manual_seed(1)
    b, s = cfg[batch_key]
    return torch.randint(0, cfg["gpt2"]["vocab_size"], (b, s), generator=g)


def gpt2_model(contender: str, cfg, batch_key="gpt2_batch"):
    """(model, input_ids) for a workload-5 contender: plain, floor, ours_cs, orig_cs, ours_hc, orig_hc."""
    model, targets = _gpt2(cfg)
    ids = _gpt2_input(cfg, batch_key)
    if contender == "plain":
        return model.train(), ids
    if contender == "floor":
        # The floor of any weight-mask training step: the same GEMMs (forward, dX, dW of every
        # Conv1D weight) with no mask maths; everything else frozen, as in the masked models.
        for name, p in model.named_parameters():
            p.requires_grad_(any(name == f"{t}.weight" for t in targets))
        # Dropout off, as in every masked model (masks train on a fixed network: model/freeze.py).
        return model.eval(), ids
    kind, strategy = contender.split("_")
    method = {"cs": "continuous_sparsification", "hc": "hard_concrete"}[strategy]
    hp = {"ablation": "none", "mask_unit": "weight", "mask_bias": False}
    hp.update({"mask_init_value": 0.0} if strategy == "cs" else {"mask_init_percentage": 0.5})
    if kind == "ours":
        cm = ns.CircuitModel(ns.CircuitConfig(mask_method=method, mask_hparams=hp, target_layers=targets, key=0), model)
    else:
        o = original()
        cm = o["CircuitModel"](o["CircuitConfig"](mask_method=method, mask_hparams=hp, target_layers=targets), model)
    cm.train(True)
    return cm, ids


def _cs_mask_passes(weights):
    """What a continuous-sparsification mask adds to a step over each weight W, and nothing else:
    m = sigma(theta) and W * m, then the backward from a W-shaped gradient (W itself, for want of
    the step's): dm = g * W and sigma's backward into theta. No GEMM; eager, as the library runs it."""
    frozen = [w.detach() for w in weights]
    thetas = [torch.zeros_like(w, requires_grad=True) for w in frozen]

    def run():
        for t in thetas:
            t.grad = None
        torch.autograd.backward([w * torch.sigmoid(t) for w, t in zip(frozen, thetas)], grad_tensors=frozen)

    return run


def gpt2_train_step(contender: str, cfg, *, compile_backend: str | None = None, batch_key="gpt2_batch"):
    """A workload-5 step; ``floor+cs_passes`` is the floor's step followed by :func:`_cs_mask_passes`
    over the weights it trains."""
    name, _, extra = contender.partition("+")
    model, ids = gpt2_model(name, cfg, batch_key)
    fwd = torch.compile(model, backend=compile_backend) if compile_backend else model
    params = [p for p in model.parameters() if p.requires_grad]
    passes = _cs_mask_passes(params) if extra == "cs_passes" else None

    def step():
        for p in params:
            p.grad = None
        fwd(input_ids=ids, labels=ids).loss.backward()
        if passes is not None:
            passes()

    return step


def w5(cfg, orig, *, memory: str = "subprocess", threads: int = 2):
    strategies = ["cs"] if cfg["smoke"] else ["cs", "hc"]
    names = ["plain", "floor"] + [f"{w}_{s}" for s in strategies for w in ("ours", "orig") if w == "ours" or orig is not None]
    steps = {n: gpt2_train_step(n, cfg) for n in names + ["floor+cs_passes"]}
    _ready(steps)
    t = interleaved(steps, repeats=cfg["repeats"]["w5"], warmup=max(1, cfg["warmup"]))
    del steps  # free the first batch's models before building the second's
    t.update(_w5_default_tokens(cfg, strategies, orig))
    rows = [
        _ratio_row("CS train step: ours / original", t, "ours_cs", "orig_cs", 1.0),
        _ratio_row("HC train step: ours / original", t, "ours_hc", "orig_hc"),
        _ratio_row("floor (Conv1D weights trainable, no masks) / original CS step", t, "floor", "orig_cs"),
        _ratio_row("CS train step: ours / floor", t, "ours_cs", "floor", 1.05, guard=True),
        _ratio_row("floor and a CS mask's own passes over every weight (sigma, W * m and their backward, no GEMM) / "
                   "floor", t, "floor+cs_passes", "floor"),
        _ratio_row("CS train step: ours / (floor and the CS mask's own passes)", t, "ours_cs", "floor+cs_passes"),
        _ratio_row("HC train step: ours / floor", t, "ours_hc", "floor"),
        _ratio_row("CS train step: ours / plain GPT-2 (all weights trainable)", t, "ours_cs", "plain"),
        _ratio_row("HC train step: ours / plain GPT-2 (all weights trainable)", t, "ours_hc", "plain"),
    ]
    b, n = cfg["gpt2_batch_default"]
    rows += [
        _ratio_row(f"at {b * n} tokens ({b} x {n}): CS train step: ours / original", t,
                   "default:ours_cs", "default:orig_cs", 1.0),
        _ratio_row(f"at {b * n} tokens ({b} x {n}): HC train step: ours / original", t,
                   "default:ours_hc", "default:orig_hc"),
        _ratio_row(f"at {b * n} tokens ({b} x {n}): floor / original CS step", t, "default:floor", "default:orig_cs"),
        _ratio_row(f"at {b * n} tokens ({b} x {n}): CS train step: ours / floor", t, "default:ours_cs", "default:floor",
                   1.05),
    ]
    mem = {}
    from . import _memory

    if memory == "subprocess" and _memory.can_measure():
        for n in names:
            try:
                mem[n] = _memory.measure_in_subprocess(n, cfg, threads)
            except Exception as e:  # pragma: no cover - environment dependent
                mem[n] = {"error": str(e)[-300:]}
        for s in ("cs", "hc"):
            a, b = mem.get(f"ours_{s}", {}), mem.get(f"orig_{s}", {})
            if "peak_rss_mib" in a and "peak_rss_mib" in b:
                r = a["peak_rss_mib"] / b["peak_rss_mib"]
                rows.append({"name": f"{s.upper()} peak RSS of a train step: ours / original", "value": r,
                             "target": "<= 1", "met": r <= 1.0, "interval": None})
                d = a["step_peak_above_before_mib"] / max(b["step_peak_above_before_mib"], 1e-9)
                rows.append({"name": f"{s.upper()} step peak above pre-step RSS: ours / original", "value": d,
                             "target": None, "met": None, "interval": None})
    return {"id": 5, "title": f"GPT-2 ({cfg['gpt2']['n_layer']} layers, random weights), every Conv1D masked: train step",
            "timings": t, "ratios": rows,
            "info": {"batch": cfg["gpt2_batch"], "batch_default_tokens": cfg["gpt2_batch_default"], "memory_mib": mem,
                     "memory_method": memory}}


def _w5_default_tokens(cfg, strategies, orig):
    """Workload 5 again at 1024 tokens, with the batch's sequence length unchanged, so only the
    tokens a step carries differ: timings keyed ``default:<contender>``."""
    names = ["floor"] + [f"{w}_{s}" for s in strategies for w in ("ours", "orig") if w == "ours" or orig is not None]
    steps = {f"default:{n}": gpt2_train_step(n, cfg, batch_key="gpt2_batch_default") for n in names}
    _ready(steps)
    return interleaved(steps, repeats=cfg["repeats"]["w5_default"], warmup=max(1, cfg["warmup"]))


# -- workload 6: random-ablation baselines through GPT-2 ------------------------------------------------
def _baseline_models(cfg, orig):
    out = {}
    # Eager attention for every contender: torch 2.13 has no vmap batching rule for CPU SDPA, so
    # with it a vmapped evaluation silently loops over the keys inside every attention call.
    model, targets = _gpt2(cfg, attn_implementation="eager")
    plain = copy.deepcopy(model).eval()
    out["plain"] = plain
    hp = {"ablation": "none", "mask_unit": "weight", "mask_bias": False, "mask_init_value": 0.0}
    ours = ns.CircuitModel(ns.CircuitConfig(mask_method="continuous_sparsification", mask_hparams=hp,
                                            target_layers=targets, key=0), copy.deepcopy(model))
    thetas = {}  # by the path inside the transformer, shared by both wrappers
    for i, (name, layer) in enumerate(ns.mask_layers(ours).items()):
        path = name[name.index("transformer."):]
        thetas[path] = _subnetwork_theta(tuple(layer.weight_mask_params.shape), cfg["density"], i)
        _set_theta(layer, thetas[path])
    out["ours"] = ours.train(False)
    if orig is not None:
        o = orig["CircuitModel"](orig["CircuitConfig"](mask_method="continuous_sparsification", mask_hparams=hp,
                                                       target_layers=targets), copy.deepcopy(model))
        for name, m in o.named_modules():
            if hasattr(m, "weight_mask_params"):
                _set_theta(m, thetas[name[name.index("transformer."):]])
        o.train(False)
        o.set_ablate_mode("complement_sampled")
        out["orig"] = o
    return out


def _baseline_floors(models, ids, metric, n_keys, chunk):
    """What any vmapped baseline pays beyond a plain forward: the vmapped forward with fresh
    per-key effective weights (one multiply each, batched GEMMs), and for each key and layer the
    least an exact-k sampler does: the words it reads (eager, as the sampler makes them) and a
    scatter of k units into a bool table (any mask is made from such marks)."""
    plain = models["plain"]
    layers = ns.mask_layers(models["ours"])
    weights = {name[name.index("transformer."):] + ".weight": m.weight.detach() for name, m in layers.items()}
    draws = [(_words_read(n, n - k, k), k, n) for m in layers.values()
             for k, n in [(int((m.weight_mask_params > 0).sum()), m.weight.numel())]]

    def vmapped():
        def one(c):
            state = {name: w * c for name, w in weights.items()}
            return metric(torch.func.functional_call(plain, state, (), {"input_ids": ids}, strict=False).logits)
        with torch.no_grad():
            torch.func.vmap(one, chunk_size=chunk)(torch.ones(n_keys))

    def words():
        for key in nr.split(nr.key(1), n_keys):
            for i, (d, k, n) in enumerate(draws):
                _scattered(nr.fold_in(key, i), d, k, n)

    return {"floor_vmapped_weights": vmapped, "floor_words": words}


def w6(cfg, orig):
    models = _baseline_models(cfg, orig)
    ids = _gpt2_input(cfg, "baseline_batch")
    K, n_seq = cfg["baselines"], cfg["orig_baselines"]
    keys = nr.split(nr.key(0), K)

    def metric(logits):
        return (logits[:, :-1].argmax(-1) == ids[:, 1:]).float().mean()

    def ours_all():
        with torch.no_grad():
            return ns.evaluate_baselines(models["ours"], lambda f: metric(f(input_ids=ids).logits), keys,
                                         ablation="complement_sampled", chunk_size=cfg["baseline_chunk"])

    def seq(model, resample):
        def run():
            with torch.no_grad():
                for _ in range(n_seq):
                    if resample:
                        model.set_ablate_mode("complement_sampled", force_resample=True)
                    metric(model(input_ids=ids).logits)
        return run

    contenders = {"ours_vmapped_all": ours_all, "plain_seq": seq(models["plain"], False),
                  **_baseline_floors(models, ids, metric, n_seq, cfg["baseline_chunk"])}
    if "orig" in models:
        contenders["orig_seq"] = seq(models["orig"], True)
    t = interleaved(contenders, repeats=cfg["repeats"]["w6"], warmup=cfg.get("w6_warmup", cfg["warmup"]))
    # the sequential contenders ran n_seq evaluations: scale to K
    rows = [
        _ratio_row(f"{K} baselines: original sequential / ours vmapped (speed-up)", t, "orig_seq", "ours_vmapped_all",
                   3, higher_is_better=True, scale=K / n_seq),
        _ratio_row(f"{K} baselines: ours vmapped / {K} plain unmasked forwards", t, "ours_vmapped_all", "plain_seq",
                   1.15, scale=n_seq / K),
        _ratio_row("floor: vmapped forwards with fresh per-key weights (W * c, no draws) / plain forwards", t,
                   "floor_vmapped_weights", "plain_seq"),
        _ratio_row("floor: each key's needed words (eager Threefry) and scatter of k units, every layer / "
                   "a plain forward", t, "floor_words", "plain_seq"),
    ]
    return {"id": 6, "title": f"{K} complement_sampled baselines through GPT-2 on a "
                              f"{cfg['baseline_batch'][0]}x{cfg['baseline_batch'][1]}-token batch",
            "timings": t, "ratios": rows,
            "info": {"chunk_size": cfg["baseline_chunk"], "sequential_evaluations_timed": n_seq,
                     "per_baseline_s": {"ours_vmapped_all": t["ours_vmapped_all"]["median_s"] / K,
                                        **{n: t[n]["median_s"] / n_seq for n in t if n != "ours_vmapped_all"}}}}


# -- workload 7: torch.compile ----------------------------------------------------------------------------
def w7(cfg, orig):
    backend = cfg["compile_backend"]
    layers = {n: layer for n, layer in _masked_linears(cfg, None).items() if n != "plain_twin"}
    x = torch.randn(cfg["tokens"], cfg["d_in"], requires_grad=True)
    gy = torch.randn(cfg["tokens"], cfg["d_out"])
    layer_steps, model_steps = {}, {}
    if cfg["smoke"]:  # one contender exercises the path
        layers = {"ours_cs": layers["ours_cs"]}
    for n, layer in layers.items():
        layer_steps[f"w1:{n}:eager"] = _linear_step(layer, x, gy)
        compiled = copy.deepcopy(layer)
        step = _linear_step(compiled, x, gy)
        compiled.forward = torch.compile(compiled.forward, backend=backend)
        layer_steps[f"w1:{n}:compiled"] = step
    # Single-layer steps take ~0.1 s and move +-5% run to run: many repeats. A GPT-2 step takes
    # seconds and its compiled twin minutes to build: few.
    t = interleaved(layer_steps, repeats=cfg["repeats"]["w7_layer"], warmup=1 + cfg["warmup"])
    if not cfg["smoke"] and cfg.get("w7_gpt2_compile", True):  # tracing a GPT-2 is too slow for a smoke run
        for n in ("ours_cs",):  # compiling a GPT-2 costs minutes on 2 cores: one strategy
            model_steps[f"w5:{n}:eager"] = gpt2_train_step(n, cfg)
            model_steps[f"w5:{n}:compiled"] = gpt2_train_step(n, cfg, compile_backend=backend)
        if orig is not None:  # compiled ours against workload 5's target (the original, eager) and
            # against the original compiled the same way (it compiles too)
            model_steps["w5:orig_cs:eager"] = gpt2_train_step("orig_cs", cfg)
            model_steps["w5:orig_cs:compiled"] = gpt2_train_step("orig_cs", cfg, compile_backend=backend)
        t.update(interleaved(model_steps, repeats=cfg["repeats"]["w7"], warmup=1 + cfg["warmup"]))
    rows = []
    for w in ("w1", "w5"):
        for n in ("plain", "ours_cs", "ours_hc"):
            if f"{w}:{n}:eager" in t:
                rows.append(_ratio_row(f"workload {w[1]} {n}: eager / compiled (speed-up)", t, f"{w}:{n}:eager",
                                       f"{w}:{n}:compiled"))
    if "w5:orig_cs:compiled" in t:
        rows += [_ratio_row("workload 5 orig_cs: eager / compiled (speed-up)", t, "w5:orig_cs:eager",
                            "w5:orig_cs:compiled")]
        rows += [_ratio_row(f"workload 5 CS train step: ours compiled / original {den}", t, "w5:ours_cs:compiled",
                            f"w5:orig_cs:{den}") for den in ("eager", "compiled")]
    return {"id": 7, "title": f"torch.compile (backend={backend!r}) of workloads 1 and 5", "timings": t,
            "ratios": rows, "info": {"backend": backend}}


# -- workload 8: cold start ------------------------------------------------------------------------
# One fresh interpreter: build the layer, then time its first call and warm ones. Self-contained
# (torch and neurosurgeon only), so nothing but the call under test can import anything first.
_COLD_START = r"""
import json, statistics, sys, time
import torch, torch.nn as nn
import neurosurgeon as ns
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
torch.manual_seed(0)
base = nn.Linear(cfg["d_in"], cfg["d_out"])
x = torch.randn(cfg["tokens"], cfg["d_in"])
if cfg["case"] == "eval":
    layer = base
    if cfg["masked"]:
        layer = ns.ContSparseLinear.from_layer(base, ablation="complement_sampled", key=0)
        g = torch.Generator().manual_seed(0)
        theta = torch.where(torch.rand(layer.weight_mask_params.shape, generator=g) < cfg["density"], 1.0, -1.0)
        with torch.no_grad():
            layer.weight_mask_params.copy_(theta)
    layer.eval()

    def call():
        with torch.no_grad():
            layer(x)
else:
    layer = ns.HardConcreteLinear.from_layer(base.requires_grad_(False), key=0) if cfg["masked"] else base
    layer.train()
    params = [p for p in layer.parameters() if p.requires_grad]

    def call():
        for p in params:
            p.grad = None
        loss = layer(x).square().mean()
        if cfg["masked"]:
            loss = loss + 1e-6 * layer.calculate_l0()
        loss.backward()
t0 = time.perf_counter(); call(); first = time.perf_counter() - t0
call()
warm = []
for _ in range(3):
    t0 = time.perf_counter(); call(); warm.append(time.perf_counter() - t0)
print("RESULT" + json.dumps({"first_s": first, "warm_s": statistics.median(warm),
                             "dynamo": "torch._dynamo" in sys.modules}))
"""


def _cold_start_process(case: str, masked: bool, cfg, threads: int) -> dict:
    """First and warm call times of one fresh ``python -c`` process (see ``_COLD_START``)."""
    args = dict(case=case, masked=masked, threads=threads, d_in=cfg["d_in"], d_out=cfg["d_out"], tokens=cfg["tokens"],
                density=cfg["density"])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the tree whose neurosurgeon is measured
    proc = subprocess.run([sys.executable, "-c", _COLD_START, json.dumps(args)], capture_output=True, text=True,
                          cwd=root, timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT"):])
    raise RuntimeError(f"cold start of {case} (masked={masked}) failed:\n{proc.stderr[-2000:]}")


_COLD_CASES = {"eval": "complement-sampled eval forward", "train": "hard-concrete train step (forward, L0, backward)"}


def w8(cfg, orig, *, threads: int = 2):
    """What the first masked call of a fresh process costs beyond a warm one, less what the first
    call of a plain ``nn.Linear`` costs beyond its warm one (its own processes): the one-time
    work the masks add (lazy imports, first use of their kernels), in seconds."""
    contenders = [(case, masked) for case in _COLD_CASES for masked in (True, False)]
    runs = {c: [] for c in contenders}
    for r in range(cfg["cold_start_processes"]):  # rounds in a rotating order, as _timing.interleaved
        for c in contenders[r % len(contenders):] + contenders[: r % len(contenders)]:
            runs[c].append(_cold_start_process(*c, cfg, threads))
    timings, excess = {}, {}
    for (case, masked), rs in runs.items():
        name = f"{case}:{'masked' if masked else 'plain'}"
        for what in ("first", "warm"):
            ts = [r[f"{what}_s"] for r in rs]
            timings[f"{name}:{what}"] = {"median_s": statistics.median(ts), "times_s": ts}
        excess[(case, masked)] = statistics.median(r["first_s"] - r["warm_s"] for r in rs)
    rows, info = [], {"processes_per_contender": cfg["cold_start_processes"]}
    for case, label in _COLD_CASES.items():
        dynamo = any(r["dynamo"] for r in runs[(case, True)])
        value = excess[(case, True)] - excess[(case, False)]
        rows.append({"name": f"cold start (s): first {label} of a masked Linear in a fresh process minus a warm one, "
                             "beyond a plain Linear's; and no torch._dynamo import",
                     "value": value, "unit": "s", "target": "<= 0.3", "met": value <= 0.3 and not dynamo,
                     "interval": None, "guard": True, "info": {"torch._dynamo imported": dynamo}})
        info[case] = {"torch._dynamo imported (masked process)": dynamo,
                      "first minus warm, masked (s)": excess[(case, True)],
                      "first minus warm, plain (s)": excess[(case, False)]}
    return {"id": 8, "title": f"cold start of a masked {cfg['d_out']}x{cfg['d_in']} Linear in fresh processes",
            "timings": timings, "ratios": rows, "info": info}



# -- workload 9: circuits: edge masks over GPT-2's graph -------------------------------------------
def circuit_setup(cfg):
    """What every workload-9 contender shares: GPT-2 (random weights, eval mode, weights trainable),
    a frozen copy, its circuit graph, a batch, the batch's resample ablation values
    ``(writers, B, T, D)`` and the full model's logits (the KL loss's reference)."""
    from types import SimpleNamespace

    from neurosurgeon import circuits as nc

    model, _ = _gpt2(cfg)
    model.eval()
    frozen = copy.deepcopy(model).requires_grad_(False)
    graph = nc.circuit_graph(model)
    ids = _gpt2_input(cfg, "circuit_batch")
    corrupted = torch.randint(0, cfg["gpt2"]["vocab_size"], ids.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = frozen(input_ids=ids, use_cache=False).logits
    ablated = nc.ablation_values(frozen, graph, "resample", ids, corrupted=corrupted)
    return SimpleNamespace(model=model, frozen=frozen, graph=graph, ids=ids, ablated=ablated, full=full)


def _kl(logits, full):
    from neurosurgeon.circuits import task_loss

    return task_loss("kl", logits, {}, full)


def _reader_sums(graph, tokens: int, width: int, *, backward: bool):
    """The reader sums alone, as cheap as they get: every writer's output stacked once in a
    ``(writers, tokens * width)`` tensor, one GEMM per reader group (its block of the mask times
    the prefix of writers it reads) and, with ``backward``, two more a group, by hand: the mask's
    gradient and the writers' gradients accumulated in place (GEMMs with beta = 1). No model and
    no autograd: the least an edge mask adds to a forward (and backward)."""
    g = torch.Generator().manual_seed(3)
    stack = torch.randn(len(graph.writers), tokens * width, generator=g)
    mask = torch.rand(graph.num_edges, generator=g)
    grads = torch.randn(max(r for r, _ in graph.segments), tokens * width, generator=g)
    d_stack, d_mask = torch.empty_like(stack), torch.empty_like(mask)
    sizes = [r * n for r, n in graph.segments]
    groups = [(b.view(r, n), d.view(r, n), n) for b, d, (r, n) in
              zip(torch.split(mask, sizes), torch.split(d_mask, sizes), graph.segments)]

    def run():
        with torch.no_grad():
            outs = [block @ stack[:n] for block, _, n in groups]
            if backward:  # in reverse, as autograd would; the logits read every writer: they start d_stack
                for i, (block, d_block, n) in enumerate(reversed(groups)):
                    gy = grads[:block.shape[0]]
                    torch.mm(gy, stack[:n].T, out=d_block)
                    if i == 0:
                        torch.mm(block.T, gy, out=d_stack[:n])
                    else:
                        d_stack[:n].addmm_(block.T, gy)
        return outs

    return run


def _writers_stack(graph, tokens: int, width: int):
    """The writers' stack a forward makes: a fresh ``(writers, tokens * width)`` tensor, each
    writer's output copied in once (from a prebuilt source). Fresh memory of that size is mapped
    anew on each call and first touched page by page, as the forward's own stack is."""
    source = torch.randn(len(graph.writers), tokens * width, generator=torch.Generator().manual_seed(5))

    def run():
        stack = torch.empty_like(source)
        for row, values in zip(stack, source):
            row.copy_(values)

    return run


def _reader_norms(model, graph, batch: int, positions: int, width: int):
    """The layer norms an edge mask adds to a forward: every layer's query, key and value readers
    each normalise their own input (``heads + 2 * kv_heads`` of them, as the circuit forward does,
    one call per kind), where the model normalises one stream. No model otherwise."""
    ln = model.transformer.h[0].ln_1
    g = torch.Generator().manual_seed(4)
    kinds = [torch.randn(n, batch, positions, width, generator=g) for n in (graph.heads, graph.kv_heads, graph.kv_heads)]

    def run():
        with torch.no_grad():
            for _ in range(graph.layers):
                for x in kinds:
                    ln(x)  # dropped at once, as the forward drops a normed input once projected

    return run


def circuit_train_step(contender: str, cfg, setup=None):
    """One workload-9 train step: ``plain`` (the model's own forward and backward, all weights
    trainable), ``plain_frozen`` (weights frozen, backward to the input embeddings only), ``edge``
    (a hard-concrete ``CircuitMask``'s soft mask under a fresh key, ``circuit_forward`` with the
    resample ablation, KL plus the L0 term, backward into theta), ``node`` (a soft mask per
    writer: the node path) or ``sums`` (:func:`_reader_sums`). Every loss is the KL of the last
    position against the full model's."""
    from neurosurgeon.circuits import CircuitMask, circuit_forward

    s = setup if setup is not None else circuit_setup(cfg)
    b, t = cfg["circuit_batch"]
    if contender == "sums":
        return _reader_sums(s.graph, b * t, cfg["gpt2"]["n_embd"], backward=True)
    if contender == "plain":
        params = list(s.model.parameters())

        def step():
            for p in params:
                p.grad = None
            _kl(s.model(input_ids=s.ids, use_cache=False).logits, s.full).backward()

        return step
    if contender == "plain_frozen":
        embed = s.frozen.get_input_embeddings()

        def step():
            x = embed(s.ids).requires_grad_()
            _kl(s.frozen(inputs_embeds=x, use_cache=False).logits, s.full).backward()

        return step
    if contender == "node":
        theta = torch.zeros(len(s.graph.writers), requires_grad=True)

        def step():
            theta.grad = None
            out = circuit_forward(s.frozen, s.graph, s.ids, node_mask=torch.sigmoid(theta), ablated=s.ablated).output
            _kl(out, s.full).backward()

        return step
    if contender != "edge":
        raise ValueError(f"unknown workload-9 step {contender!r}")
    mask = CircuitMask(s.graph, strategy="hard_concrete")
    key, counter = nr.key(0), iter(range(1 << 62))

    def step():
        mask.theta.grad = None
        soft = mask.soft(nr.fold_in(key, next(counter)))
        out = circuit_forward(s.frozen, s.graph, s.ids, mask=soft, ablated=s.ablated).output
        (_kl(out, s.full) + 1e-4 * mask.l0()).backward()

    return step


def w9(cfg, orig, *, memory: str = "subprocess", threads: int = 2):
    from neurosurgeon import circuits as nc
    from neurosurgeon.circuits.null import circuit_chunk_size
    from neurosurgeon.functional.edges import random_circuit

    s = circuit_setup(cfg)
    graph, (b, n_pos), width = s.graph, cfg["circuit_batch"], cfg["gpt2"]["n_embd"]
    reps = cfg["circuit_repeats"]
    W, E, K = len(graph.writers), graph.num_edges, cfg["circuits"]
    # Train steps.
    steps = {f"train:{n}": circuit_train_step(n, cfg, s) for n in ("plain", "plain_frozen", "edge", "node", "sums")}
    node, sums = steps["train:node"], steps["train:sums"]

    def node_and_sums():
        node()
        sums()

    steps["train:node+sums"] = node_and_sums
    _ready(steps)
    t = interleaved(steps, repeats=reps["train"], warmup=max(1, cfg["warmup"]))
    del steps, node, sums
    # Forwards with one binary circuit, and the floors under them.
    circuit = random_circuit(nr.key(1), E, round(cfg["density"] * E))
    fsums = _reader_sums(graph, b * n_pos, width, backward=False)

    def forward(mask=None, plain=False):
        def run():
            with torch.no_grad():
                if plain:
                    return s.frozen(input_ids=s.ids, use_cache=False).logits
                return nc.circuit_forward(s.frozen, graph, s.ids, mask=mask, ablated=s.ablated).output
        return run

    fwd = {"forward:plain": forward(plain=True), "forward:edge": forward(circuit), "forward:node": forward(),
           "forward:sums": fsums}
    node_fwd = fwd["forward:node"]
    fwd["forward:node+sums"] = lambda: (node_fwd(), fsums())
    fnorms = _reader_norms(s.frozen, graph, b, n_pos, width)
    fwd["forward:node+sums+norms"] = lambda: (node_fwd(), fsums(), fnorms())
    fstack = _writers_stack(graph, b * n_pos, width)
    fwd["forward:node+stack+sums+norms"] = lambda: (node_fwd(), fstack(), fsums(), fnorms())
    _ready(fwd)
    t.update(interleaved(fwd, repeats=reps["forward"], warmup=max(1, cfg["warmup"])))
    del fwd
    # K random circuits of the circuit's size: one vmapped call against a loop of K forwards.
    circuits = nc.random_circuits(nr.key(2), graph, circuit, K)
    chunk = cfg["circuit_chunk"] or circuit_chunk_size(s.frozen, graph, s.ids, K)  # None: the library's default

    def score(logits):
        return _kl(logits, s.full)

    def default():
        return nc.evaluate_circuits(s.frozen, graph, circuits, s.ids, score, ablated=s.ablated,
                                    chunk_size=cfg["circuit_chunk"])  # None: the default chunk

    def vmapped():  # at least two a chunk: a vmap whatever the default is
        return nc.evaluate_circuits(s.frozen, graph, circuits, s.ids, score, ablated=s.ablated,
                                    chunk_size=max(2, min(chunk, K)))

    def loop():
        with torch.no_grad():
            return torch.stack([score(nc.circuit_forward(s.frozen, graph, s.ids, mask=c, ablated=s.ablated).output)
                                for c in circuits])

    # No warm-up round: each contender runs K forwards whose kernels the forwards above have warmed.
    t.update(interleaved({"evaluate:default": default, "evaluate:vmapped": vmapped, "evaluate:loop": loop},
                         repeats=reps["evaluate"], warmup=0))
    rows = [
        _ratio_row("edge-masked train step (hard-concrete soft mask, circuit_forward, resample ablation, KL + L0, "
                   "backward into theta) / plain train step (all weights trainable)", t, "train:edge", "train:plain",
                   2.5, guard=True),
        _ratio_row("edge-masked train step / plain step with frozen weights (backward to the input embeddings only)",
                   t, "train:edge", "train:plain_frozen"),
        _ratio_row("floor: node path (per-writer outputs, one stream, soft node mask) train step / plain train step",
                   t, "train:node", "train:plain"),
        _ratio_row("floor: reader sums alone, one GEMM per reader group over stacked writers, forward and backward / "
                   "plain train step", t, "train:sums", "train:plain"),
        _ratio_row("floor: node path step and reader-sum GEMMs / plain train step", t, "train:node+sums",
                   "train:plain"),
        _ratio_row("edge-masked train step / floor (node path step and reader-sum GEMMs)", t, "train:edge",
                   "train:node+sums"),
        _ratio_row(f"edge-masked forward, binary circuit ({cfg['density']:.0%} of edges) / plain forward", t,
                   "forward:edge", "forward:plain", 1.6, guard=True),
        _ratio_row("floor: node path forward (mask=None) / plain forward", t, "forward:node", "forward:plain"),
        _ratio_row("floor: reader-sum GEMMs forward / plain forward", t, "forward:sums", "forward:plain"),
        _ratio_row("floor: node path forward and reader-sum GEMMs / plain forward", t, "forward:node+sums",
                   "forward:plain"),
        _ratio_row("floor: node path forward, reader-sum GEMMs and the readers' own layer norms / plain forward", t,
                   "forward:node+sums+norms", "forward:plain"),
        _ratio_row("floor: the same and the writers' stack written afresh (first touch) / plain forward", t,
                   "forward:node+stack+sums+norms", "forward:plain"),
        _ratio_row(f"{K} random circuits: evaluate_circuits ({chunk} a chunk"
                   f"{', the default' if cfg['circuit_chunk'] is None else ''}"
                   f"{'; one plain call a circuit' if chunk == 1 else ', vmapped'}) / the same {K} circuit_forward "
                   "calls in a loop", t, "evaluate:default", "evaluate:loop", 1.0, guard=True),
        _ratio_row(f"{K} random circuits: evaluate_circuits (vmapped, {max(2, min(chunk, K))} a chunk) / the same loop",
                   t, "evaluate:vmapped", "evaluate:loop"),
    ]
    # Peak memory of a train step against the writers' outputs it must hold: W x B x T x D floats.
    floor_mib = W * b * n_pos * width * s.ablated.element_size() / 2**20
    mem = {}
    from . import _memory

    del s, circuits
    if memory == "subprocess" and _memory.can_measure():
        for n in ("edge", "plain"):
            try:
                mem[n] = _memory.measure_in_subprocess(n, cfg, threads, builder="circuit_train_step")
            except Exception as e:  # pragma: no cover - environment dependent
                mem[n] = {"error": str(e)[-300:]}
        for n, label in (("edge", "edge-masked train step"), ("plain", "plain train step")):
            if "step_peak_above_before_mib" in mem[n]:
                v = mem[n]["step_peak_above_before_mib"]
                rows.append({"name": f"{label}: peak RSS above pre-step RSS / writers x batch x positions x width x "
                                     f"4 bytes ({W} x {b} x {n_pos} x {width}: {floor_mib:.0f} MiB)",
                             "value": v / floor_mib, "target": None, "met": None, "interval": None,
                             "info": {"peak_above_before_mib": v, **mem[n]}})
    return {"id": 9, "title": f"circuits: edge masks over GPT-2 ({graph.layers} layers, {E} edges, {W} writers) on a "
                              f"{b}x{n_pos}-token batch",
            "timings": t, "ratios": rows,
            "info": {"edges": E, "writers": W, "circuit_edges": int(circuit.sum()), "circuits": K,
                     "chunk_size": chunk, "writers_floor_mib": floor_mib, "memory_mib": mem}}


WORKLOADS = {1: w1, 2: w2, 3: w3, 4: w4, 5: w5, 6: w6, 7: w7, 8: w8, 9: w9}
