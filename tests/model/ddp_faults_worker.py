"""Run under torchrun by test_ddp_faults.py: every fault, on both architectures, a few DDP steps each.

One process group for all runs (train() leaves a group it did not start alone), so the 24 runs pay
for one torchrun start. Rank 0 prints ``ok ARCH FAULT STEPS`` after each run; a crash ends torchrun.
"""

from __future__ import annotations

import sys
from datetime import timedelta

import torch.distributed as td

from muvo_model.config import load_run_config
from muvo_model.faults import FAULTS, get_fault
from muvo_model.train import train

SETS = [
    "data.train_frames=32",
    "data.val_frames=16",
    "data.image_size=32",
    "data.points=64",
    "model.width=16",
    "train.batch_size=8",
    "train.eval_batch_size=16",
    "train.steps=3",
    "train.log_every=1",
    "train.eval_every=3",
    "train.threads=1",
    "train.device=cpu",  # gloo on CPU on any machine: the test is about DDP's bookkeeping, not speed
]


def main(runs: list[tuple[str, str, list[str]]]) -> None:
    td.init_process_group("gloo", timeout=timedelta(seconds=60))  # a hung rank fails, not waits 30 min
    for arch, name, sets in runs:
        result = train(load_run_config(None, [*SETS, f"model.arch={arch}", *sets]), fault=get_fault(name))
        if td.get_rank() == 0:
            print(f"ok {arch} {name} {' '.join(sets)} {len(result.losses)}".replace("  ", " "), flush=True)
    td.destroy_process_group()


if __name__ == "__main__":
    archs = sys.argv[1].split(",")
    faults = sys.argv[2].split(",") if len(sys.argv) > 2 else list(FAULTS)
    runs = [(arch, name, []) for arch in archs for name in faults]
    # The healthy fusion model with its point loss switched off leaves the point head unused too.
    runs.append(("fusion", "none", ["train.point_loss_weight=0"]))
    main(runs)
