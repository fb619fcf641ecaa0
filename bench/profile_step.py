"""Where a training step's GPU time goes: torch.profiler over a few steps of the fast path.

    python bench/profile_step.py --batch 1024 [--compile] [--arch original]
Prints the top kernels by device time (the device tool returns the tail of the output).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import make_ours  # noqa: E402

from muvo_model.data.synthetic import SyntheticConfig, generate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--arch", default="original")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--points", type=int, default=4096)
    ap.add_argument("--rows", type=int, default=30)
    args = ap.parse_args()
    device = torch.device("cuda")
    cfg = SyntheticConfig(image_size=(args.size, args.size), num_points=args.points)
    data = generate(args.batch, seed=0, config=cfg, device=device)
    _, one, close = make_ours(args.arch, device, args.batch, amp=True, compile_=args.compile, doctor=False)
    for _ in range(15):
        one(data)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            one(data)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))
    close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
