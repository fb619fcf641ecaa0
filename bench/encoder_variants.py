"""The original image encoder's forward + backward, computed four ways, timed side by side (GPU).

    python3 bench/encoder_variants.py [--batch 1024]

The encoder (conv 3->32, ReLU, max-pool 2, conv 32->64, ReLU, max-pool 2, conv 64->128, ReLU, adaptive
average pool 4x4) dominates the folded training step. The variants are the same function:
- ``module``: nn.MaxPool2d (it stores int64 indices for backward) and the 3-channel input, which cuDNN
  pads to 8 channels on every call;
- ``max4``: 2x2 max-pool as the maximum of the four strided slices (no indices; autograd routes the
  gradient through the comparisons; ties split it, and they are measure-zero in float);
- ``pad8``: input images held with 8 channels (5 zero), weights zero-padded to match (gradient flows to
  the 3 real input channels only);
- ``both``.
Each is compiled, bf16 autocast, channels_last; the input needs no gradient, as in training.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from muvo_model.model import image_encoder


def max4(x: torch.Tensor) -> torch.Tensor:
    return torch.maximum(
        torch.maximum(x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2]),
        torch.maximum(x[:, :, 1::2, 0::2], x[:, :, 1::2, 1::2]),
    )


def encoder(seq: nn.Sequential, x: torch.Tensor, *, use_max4: bool, pad8: bool) -> torch.Tensor:
    c1, c2, c3 = seq[0], seq[3], seq[6]
    w1 = F.pad(c1.weight, (0, 0, 0, 0, 0, x.shape[1] - c1.weight.shape[1])) if pad8 else c1.weight
    pool = max4 if use_max4 else (lambda t: F.max_pool2d(t, 2))
    h = pool(F.relu(F.conv2d(x, w1, c1.bias, padding=1)))
    h = pool(F.relu(c2(h)))
    h = F.relu(c3(h))
    return F.adaptive_avg_pool2d(h, (4, 4))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    seq = image_encoder(128, 4).to(dev, memory_format=torch.channels_last)  # the original architecture's
    x3 = torch.rand(args.batch, 3, 224, 224, device=dev).to(torch.bfloat16)
    x3 = x3.contiguous(memory_format=torch.channels_last)
    x8 = F.pad(x3, (0, 0, 0, 0, 0, 5)).contiguous(memory_format=torch.channels_last)
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; batch {args.batch}", flush=True)
    ref = None
    rows = []
    for label, m4, p8 in (
        ("module", False, False),
        ("max4", True, False),
        ("pad8", False, True),
        ("both", True, True),
    ):
        fn = torch.compile(lambda x, m4=m4, p8=p8: encoder(seq, x, use_max4=m4, pad8=p8))
        x = x8 if p8 else x3

        def step(fn=fn, x=x) -> torch.Tensor:
            for p in seq.parameters():
                p.grad = None
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = fn(x)
            out.float().square().mean().backward()
            return out

        for _ in range(5):
            out = step()
        grads = torch.cat([p.grad.flatten().float() for p in seq.parameters()])
        if ref is None:
            ref = (out.float(), grads)
        diff = (out.float() - ref[0]).abs().max().item(), ((grads - ref[1]).norm() / ref[1].norm()).item()
        torch.cuda.synchronize()
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        ms = statistics.median(times) * 1e3
        rows.append((label, ms))
        print(f"{label}: {ms:.2f} ms (max |out diff| {diff[0]:.2e}, rel grad diff {diff[1]:.2e})", flush=True)
    base = rows[0][1]
    for label, ms in rows:
        print(f"{label:8s} {ms:8.2f} ms  {base / ms:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
