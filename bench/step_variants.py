"""Variants of the fastest training step, timed side by side in one process (GPU).

    python3 bench/step_variants.py [--batch 1024] [--steps 40] [--profile]
    python3 bench/step_variants.py --quick     # a CPU smoke run at tiny sizes, eager (checks the script, not speed)

Each row is the original architecture, bf16, channels_last, fused AdamW, torch.compile, the folded
point algebra (muvo_model.fastpath) and the doctor's Recorder on: the ``compile folded`` row of
bench/throughput.py. The variants change one thing at a time, all the same function and parameters:
- the training images held on the device in bf16 channels_last (no per-step cast and layout change);
- ``FoldedOriginal(s2d_stem=True)``: conv 3->32 + ReLU + max-pool by space-to-depth (a 3x3 convolution over
  the pixel-unshuffled grid, the pool a max over 4 adjacent channels, no int64 indices);
- the same with the images held in bf16 channels_last and padded to 4 channels (16 s2d channels);
- and ``relu_after_pool=True`` on top (the second block's ReLU after its max-pool).
(cuDNN's autotuner, 8-channel images and a max-of-slices pool were measured on the H200 and changed
nothing or lost: bench/RESULTS.md.) ``--profile`` prints the top kernels of the last variant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import diverged, make_ours, time_ours  # noqa: E402

from muvo_model.data.synthetic import SyntheticConfig, generate  # noqa: E402
from muvo_model.fastpath import s2d_images  # noqa: E402

# label, images ("fp32": as generated; "bf16": bf16 channels_last; "bf16x4": the same, 4 channels), options
VARIANTS: list[tuple[str, str, dict[str, bool]]] = [
    ("compile folded (throughput.py)", "fp32", {}),
    ("bf16 channels_last images", "bf16", {}),
    ("s2d stem", "fp32", {"s2d": True}),
    ("s2d stem + bf16 cl 4-ch images", "bf16x4", {"s2d": True}),
    ("s2d + relu-after-pool + bf16x4", "bf16x4", {"s2d": True, "relu_after_pool": True}),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--frames", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--quick", action="store_true", help="CPU, tiny sizes, eager: a smoke run of the script")
    args = ap.parse_args()
    if args.quick:
        device, size, npts, args.batch, args.frames, args.steps, warmup = "cpu", 32, 64, 4, 16, 3, 1
    elif not torch.cuda.is_available():
        print(
            "step_variants.py: needs a CUDA GPU (none visible); use --quick for a CPU smoke run",
            file=sys.stderr,
        )
        return 2
    else:
        device, size, npts, warmup = "cuda", 224, 4096, 15
    device = torch.device(device)
    cuda = device.type == "cuda"
    cfg = SyntheticConfig(image_size=(size, size), num_points=npts, anomaly_fraction=0.5)
    data = generate(args.frames, seed=0, config=cfg, device=device)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"{name}; torch {torch.__version__}; image dtype {data.image.dtype}", flush=True)
    cl = torch.channels_last
    images = {
        "fp32": data.image,
        "bf16": data.image.to(torch.bfloat16).contiguous(memory_format=cl),
        "bf16x4": s2d_images(data.image),
    }
    rows = []
    for label, kind, options in VARIANTS:
        data.image = images[kind]
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        model, one, close = make_ours(
            "original", device, args.batch, amp=True, compile_=cuda, doctor=True, fold=True, **options
        )
        sps, ms = time_ours(one, data, args.batch, args.steps, warmup, device)
        shown = label + " DIVERGED" if diverged(model) else label  # a diverged run's speed is not a result
        gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        rows.append((shown, sps, ms, gib))
        print(f"{shown}: {sps:,.0f} samples/s, {ms:.2f} ms/step, {gib:.2f} GiB", flush=True)
        if args.profile and label == VARIANTS[-1][0]:
            batch = data.index(torch.arange(args.batch, device=device))
            activity = torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU
            with torch.profiler.profile(activities=[activity]) as prof:
                for _ in range(5):
                    one(batch)
                if cuda:
                    torch.cuda.synchronize()
            sort = "cuda_time_total" if cuda else "cpu_time_total"
            print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))
        close()
    base = rows[0][1]
    print(f"\n{'variant':32s} {'samples/s':>10s} {'ms/step':>8s} {'GiB':>6s} {'x':>6s}")
    for label, sps, ms, gib in rows:
        print(f"{label:32s} {sps:10,.0f} {ms:8.2f} {gib:6.2f} {sps / base:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
