"""The original image encoder's forward + backward, computed several ways, timed side by side (GPU).

    python3 bench/encoder_variants.py [--batch 1024] [--only s2d,s2d4]
    python3 bench/encoder_variants.py --quick     # CPU, tiny sizes, eager (checks the script, not speed)

The encoder (conv 3->32, ReLU, max-pool 2, conv 32->64, ReLU, max-pool 2, conv 64->128, ReLU, adaptive
average pool 4x4) dominates the folded training step. The variants are the same function:
- ``module``: nn.MaxPool2d (it stores int64 indices for backward) and the 3-channel input, which cuDNN
  pads to 8 channels on every call;
- ``max4``: 2x2 max-pool as the maximum of the four strided slices (no indices; autograd routes the
  gradient through the comparisons; ties split it, and they are measure-zero in float);
- ``pad8``: input images held with 8 channels (5 zero), weights zero-padded to match (gradient flows to
  the 3 real input channels only);
- ``both`` (these four were measured on the H200: bench/RESULTS.md);
- ``s2d``: the first conv + ReLU + max-pool by space-to-depth (muvo_model.fastpath.s2d_stem: a 3x3
  convolution over the pixel-unshuffled 12-channel grid, the pool a max over 4 adjacent channels);
- ``s2d4``: the same from images held with 4 channels (the 4th zero; 16 s2d channels);
- ``s2d4 late relu``: and the second block's ReLU after its max-pool.
Each is compiled, bf16 autocast, channels_last; the input needs no gradient, as in training. The max
|output difference| and relative gradient difference are against the first row run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from muvo_model.fastpath import encode_image, s2d_weight_index
from muvo_model.model import image_encoder

# label: (max4 pool, 8-channel images, s2d stem, ReLU after the second pool); s2d rows read 4-channel
# images when the label says s2d4.
VARIANTS = {
    "module": (False, False, False, False),
    "max4": (True, False, False, False),
    "pad8": (False, True, False, False),
    "both": (True, True, False, False),
    "s2d": (False, False, True, False),
    "s2d4": (False, False, True, False),
    "s2d4 late relu": (False, False, True, True),
}


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
    ap.add_argument("--only", default="", help=f"comma-separated rows to run, of: {', '.join(VARIANTS)}")
    ap.add_argument("--quick", action="store_true", help="CPU, tiny sizes, eager: a smoke run of the script")
    args = ap.parse_args()
    labels = [v.strip() for v in args.only.split(",") if v.strip()] or list(VARIANTS)
    unknown = [v for v in labels if v not in VARIANTS]
    if unknown:
        print(
            f"encoder_variants.py: --only: unknown {unknown}; rows are {', '.join(VARIANTS)}", file=sys.stderr
        )
        return 2
    if args.quick:
        dev, size, args.batch, args.reps = torch.device("cpu"), 32, 4, 2
    elif not torch.cuda.is_available():
        print(
            "encoder_variants.py: needs a CUDA GPU (none visible); use --quick for a CPU smoke run",
            file=sys.stderr,
        )
        return 2
    else:
        dev, size = torch.device("cuda"), 224
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    seq = image_encoder(128, 4).to(dev, memory_format=torch.channels_last)  # the original architecture's
    x3 = torch.rand(args.batch, 3, size, size, device=dev).to(torch.bfloat16)
    x3 = x3.contiguous(memory_format=torch.channels_last)
    padded = {
        c: F.pad(x3, (0, 0, 0, 0, 0, c - 3)).contiguous(memory_format=torch.channels_last) for c in (4, 8)
    }
    index = {c: s2d_weight_index(32, 3, c).to(dev) for c in (3, 4)}
    name = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"{name}; torch {torch.__version__}; batch {args.batch}", flush=True)
    ref = None
    rows = []
    for label in labels:
        m4, p8, s2d, late = VARIANTS[label]
        x = padded[8] if p8 else padded[4] if label.startswith("s2d4") else x3
        if s2d:
            idx = index[x.shape[1]]
            fn = lambda x, idx=idx, late=late: encode_image(seq, x, s2d_index=idx, relu_after_pool=late)  # noqa: E731
        else:
            fn = lambda x, m4=m4, p8=p8: encoder(seq, x, use_max4=m4, pad8=p8)  # noqa: E731
        fn = torch.compile(fn) if cuda else fn

        def step(fn=fn, x=x) -> torch.Tensor:
            for p in seq.parameters():
                p.grad = None
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                out = fn(x)
            out.float().square().mean().backward()
            return out

        for _ in range(5 if cuda else 1):
            out = step()
        grads = torch.cat([p.grad.flatten().float() for p in seq.parameters()])
        if ref is None:
            ref = (out.float(), grads)
        diff = (out.float() - ref[0]).abs().max().item(), ((grads - ref[1]).norm() / ref[1].norm()).item()
        if cuda:
            torch.cuda.synchronize()
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        ms = statistics.median(times) * 1e3
        rows.append((label, ms))
        print(f"{label}: {ms:.2f} ms (max |out diff| {diff[0]:.2e}, rel grad diff {diff[1]:.2e})", flush=True)
    base = rows[0][1]
    for label, ms in rows:
        print(f"{label:16s} {ms:8.2f} ms  {base / ms:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
