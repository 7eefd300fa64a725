"""Helpers for the tests that spawn gloo process groups."""

import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run_ranks(body, out_dir: str, world: int) -> None:
    """Run ``body(rank, out_dir)`` on ``world`` spawned gloo ranks (one intra-op thread each)
    and wait for all of them; ``body`` saves its results under ``out_dir``."""
    mp.spawn(_rank_main, args=(body, out_dir, world), nprocs=world, join=True)


def _rank_main(rank: int, body, out_dir: str, world: int) -> None:
    init = os.path.join(out_dir, "init")
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        body(rank, out_dir)
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    _leave_without_teardown(out_dir, rank, world)


def _leave_without_teardown(out_dir: str, rank: int, world: int) -> None:
    """End a spawned rank once every rank has finished, skipping gloo's teardown.

    gloo's teardown aborts ranks now and then ("terminate called without an active exception",
    SIGABRT), in ``destroy_process_group`` or in the destructors that run at exit, even after a
    barrier. The results are saved by then; once every rank has said so through a file (not
    through gloo), each leaves without running any teardown.
    """
    open(os.path.join(out_dir, f"done{rank}"), "w").close()
    while not all(os.path.exists(os.path.join(out_dir, f"done{r}")) for r in range(world)):
        time.sleep(0.01)
    os._exit(0)
