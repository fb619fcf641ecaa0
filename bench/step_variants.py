"""Variants of the fastest training step, timed side by side in one process (GPU).

    python3 bench/step_variants.py [--batch 1024] [--steps 40] [--profile]

Each row is the original architecture, bf16, channels_last, fused AdamW, torch.compile, the folded
point algebra (muvo_model.fastpath) and the doctor's Recorder on: the ``compile folded`` row of
bench/throughput.py. The variants change one thing each: cuDNN's autotuner (``cudnn.benchmark``), the
training images held on the device in bf16 channels_last (so no per-step cast and layout change), both.
(8-channel images with a zero-padded first-conv weight and a 2x2 max-pool without indices are timed on
the encoder alone by bench/encoder_variants.py: neither helped.)
``--profile`` prints the top kernels of the last variant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import make_ours, time_ours  # noqa: E402

from muvo_model.data.synthetic import SyntheticConfig, generate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--frames", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    device = torch.device("cuda")
    cfg = SyntheticConfig(image_size=(224, 224), num_points=4096, anomaly_fraction=0.5)
    data = generate(args.frames, seed=0, config=cfg, device=device)
    print(
        f"{torch.cuda.get_device_name()}; torch {torch.__version__}; image dtype {data.image.dtype}",
        flush=True,
    )
    fp32_image = data.image
    bf16_image = data.image.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    rows = []
    variants = [
        ("as throughput.py", False, False),
        ("cudnn.benchmark", True, False),
        ("bf16 channels_last images", False, True),
        ("both", True, True),
    ]
    for label, bench, bf16 in variants:
        torch.backends.cudnn.benchmark = bench
        data.image = bf16_image if bf16 else fp32_image
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        _, one, close = make_ours(
            "original", device, args.batch, amp=True, compile_=True, doctor=True, fold=True
        )
        sps, ms = time_ours(one, data, args.batch, args.steps, 15, device)
        gib = torch.cuda.max_memory_allocated() / 2**30
        rows.append((label, sps, ms, gib))
        print(f"{label}: {sps:,.0f} samples/s, {ms:.2f} ms/step, {gib:.2f} GiB", flush=True)
        if args.profile and label == variants[-1][0]:
            batch = data.index(torch.arange(args.batch, device=device))
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    one(batch)
                torch.cuda.synchronize()
            print(
                prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60)
            )
        close()
    base = rows[0][1]
    print(f"\n{'variant':30s} {'samples/s':>10s} {'ms/step':>8s} {'GiB':>6s} {'x':>6s}")
    for label, sps, ms, gib in rows:
        print(f"{label:30s} {sps:10,.0f} {ms:8.2f} {gib:6.2f} {sps / base:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
