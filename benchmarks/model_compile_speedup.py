"""Measure the speed-up of torch.compile over eager for one masked training step.

A small GPT-2 (2 layers, width 128, batch 8 x 64 tokens, random weights) with masks on every
Conv1D; one step = forward + L0 term (compiled or eager), backward, Adam step on the masks.

    python benchmarks/model_compile_speedup.py [--strategy hard_concrete] [--steps 20]
"""

import argparse
import copy
import statistics
import time

import torch
import transformers
from transformers.pytorch_utils import Conv1D

import neurosurgeon as ns


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--strategy", default="continuous_sparsification")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--width", type=int, default=128)
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=args.width, n_head=4, vocab_size=512, n_positions=64,
                                  bos_token_id=0, eos_token_id=0, attn_implementation="sdpa")
    base = transformers.GPT2LMHeadModel(cfg)
    ns.inject_masks(base, Conv1D, key=0, strategy=args.strategy)
    ids = torch.randint(0, 512, (8, 64))

    def loss_fn(model, ids):
        return model(input_ids=ids, labels=ids).loss + 1e-6 * ns.l0_penalty(model)

    results = {}
    for name, fn in (("eager", loss_fn), ("compiled", torch.compile(loss_fn))):
        model = copy.deepcopy(base).train()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)

        def step():
            opt.zero_grad()
            loss = fn(model, ids)
            loss.backward()
            opt.step()
            return loss

        t0 = time.perf_counter()
        for _ in range(3):  # warm-up (and compilation)
            step()
        warm = time.perf_counter() - t0
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        results[name] = statistics.median(times)
        print(f"{name:9s} median step {1e3 * results[name]:7.2f} ms (first 3 steps incl. compile: {warm:.1f} s)")
    print(f"speed-up: {results['eager'] / results['compiled']:.2f}x  "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads, strategy {args.strategy})")


if __name__ == "__main__":
    main()
