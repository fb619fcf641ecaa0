"""Training throughput: the original pipeline and ours, side by side in one run (issue 6).

    python bench/throughput.py                 # on a GPU: the full table (224x224 images, 4096 points)
    python bench/throughput.py --quick         # a CPU smoke run at tiny sizes (checks the script, not speed)

Rows (all train the `original` 792,321-parameter architecture unless the row says `fusion`):
- baseline: the incident's pipeline. Per-sample CPU tensors, DataLoader(batch 8, 4 workers, pinned memory),
  fp32, Adam, BCEWithLogitsLoss, `loss.item()` every step. Kept in every run as the ratio's denominator.
- ours: data generated on the device once (muvo_model.data.synthetic), batches gathered on the device,
  bf16 autocast, channels_last, fused AdamW, optional torch.compile, the doctor's Recorder on (no host sync
  per step), the step of muvo_model.train.make_step. `--s2d` / `--relu-after-pool` turn on the folded
  path's exact encoder options (muvo_model.fastpath) in the folded rows and the --quality fast path.
Also: synthetic generation speed on the device vs the CPU, and, with --quality, frame AUROC on a held-out
synthetic split after the same number of training samples through the slow and the fast path.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from muvo_model.data.frames import Frames  # noqa: E402
from muvo_model.data.synthetic import SyntheticConfig, generate  # noqa: E402
from muvo_model.fastpath import FoldedOriginal, s2d_images  # noqa: E402
from muvo_model.model import build_model  # noqa: E402
from muvo_model.train import LossSpec, make_step  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gen_speed(n: int, cfg: SyntheticConfig, device: torch.device) -> float:
    """Frames per second of the synthetic generator (one warm-up call excluded)."""
    generate(min(n, 16), seed=1, config=cfg, device=device)
    sync(device)
    t = time.perf_counter()
    generate(n, seed=2, config=cfg, device=device)
    sync(device)
    return n / (time.perf_counter() - t)


class PerSample(torch.utils.data.Dataset):
    """The original pipeline's dataset: one CPU tensor triple per sample."""

    def __init__(self, frames: Frames) -> None:
        self.image = frames.image.cpu()
        self.points = frames.points.cpu()
        self.label = frames.frame_label.cpu()

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.image[i].clone(), self.points[i].clone(), self.label[i].clone()


def run_baseline(
    frames: Frames, device: torch.device, steps: int, warmup: int, workers: int
) -> tuple[float, float, torch.nn.Module]:
    """The incident's loop. Returns (samples/s, ms/step, model)."""
    torch.manual_seed(0)
    model = build_model("original").to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    crit = torch.nn.BCEWithLogitsLoss()
    loader = torch.utils.data.DataLoader(
        PerSample(frames),
        batch_size=8,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
    )
    done, t0 = 0, 0.0
    while done < warmup + steps:
        for img, pts, y in loader:
            if done == warmup:
                sync(device)
                t0 = time.perf_counter()
            img, pts, y = img.to(device), pts.to(device), y.to(device)
            opt.zero_grad()
            loss = crit(model(img, pts)["frame_logit"], y)
            loss.backward()
            opt.step()
            loss.item()  # the original printed a running loss: a host sync every step
            done += 1
            if done == warmup + steps:
                break
    sync(device)
    dt = time.perf_counter() - t0
    return steps * 8 / dt, dt / steps * 1e3, model


def make_ours(
    arch: str,
    device: torch.device,
    batch: int,
    *,
    amp: bool,
    compile_: bool,
    doctor: bool,
    fold: bool = False,
    s2d: bool = False,
    relu_after_pool: bool = False,
) -> tuple[torch.nn.Module, Callable[[Frames], None], Callable[[], None]]:
    """Our fast step for `arch`; returns (model, step(batch_frames), close).

    fold: run the original architecture through muvo_model.fastpath.FoldedOriginal (same parameters and
    function, re-associated algebra); the returned model is the plain OriginalModel either way.
    s2d, relu_after_pool: FoldedOriginal's options (the first block by space-to-depth; ReLU after the
    other max-pools), folded rows only.
    """
    if (s2d or relu_after_pool) and not fold:
        raise ValueError("make_ours: s2d and relu_after_pool are options of the folded path; pass fold=True")
    torch.manual_seed(0)
    model = build_model(arch).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    runner = FoldedOriginal(model, s2d_stem=s2d, relu_after_pool=relu_after_pool) if fold else model
    # Linear scaling of the learning rate with the batch, from the incident's 1e-3 at batch 8, capped.
    lr = min(1e-3 * batch / 8, 3e-3)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=device.type == "cuda")
    net = torch.compile(runner) if compile_ else runner
    spec = LossSpec(pos_weight=None, point_pos_weight=None, point_weight=0.0)
    step = make_step(net, opt, None, spec, amp_dtype=torch.bfloat16 if amp else None, grad_clip=1.0)
    rec = None
    if doctor:
        from muvo_doctor.recorder import Recorder

        rec = Recorder(model, opt)
    counter = [0]

    def one(b: Frames) -> None:
        loss, logits = step(b, b.frame_label)
        if rec is not None:
            rec.record(counter[0], loss=loss, outputs=logits, labels=b.frame_label)
        counter[0] += 1

    def close() -> None:
        if rec is not None:
            rec.close()

    return model, one, close


def diverged(model: torch.nn.Module) -> bool:
    """Whether training left a non-finite parameter: the speed of such a run is not a result."""
    return not all(bool(torch.isfinite(p).all()) for p in model.parameters())


def time_ours(
    one: Callable[[Frames], None], data: Frames, batch: int, steps: int, warmup: int, device: torch.device
) -> tuple[float, float]:
    """(samples/s, ms/step) over `steps` steps after `warmup`; batches gathered on the device."""
    g = torch.Generator(device=data.image.device).manual_seed(0)
    n = len(data)

    def batch_at() -> Frames:
        idx = torch.randint(0, n, (batch,), device=data.image.device, generator=g)
        return data.index(idx)

    for _ in range(warmup):
        one(batch_at())
    sync(device)
    times = []
    reps = 3
    per = max(1, steps // reps)
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(per):
            one(batch_at())
        sync(device)
        times.append((time.perf_counter() - t) / per)
    dt = statistics.median(times)
    return batch / dt, dt * 1e3


@torch.no_grad()
def frame_auroc(model: torch.nn.Module, val: Frames, amp: bool) -> float:
    from muvo_model.metrics import auroc

    model.eval()
    out = []
    for i in range(0, len(val), 256):
        b = val.index(slice(i, i + 256))
        with torch.autocast(val.image.device.type, dtype=torch.bfloat16, enabled=amp):
            out.append(model(b.image, b.points, b.point_mask)["frame_logit"].float())
    model.train()
    return auroc(torch.cat(out).cpu().numpy(), val.frame_label.cpu().numpy())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes on any device (a smoke run)")
    ap.add_argument("--frames", type=int, default=4096, help="training frames held on the device")
    ap.add_argument("--steps", type=int, default=60, help="timed steps per row")
    ap.add_argument("--batches", default="8,256,1024", help="batch sizes for our pipeline")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument(
        "--only", default="", help="run only our rows whose label contains this text (baseline always)"
    )
    ap.add_argument("--quality", action="store_true", help="also train slow vs fast to equal samples, AUROC")
    ap.add_argument("--quality-samples", type=int, default=120_000)
    ap.add_argument(
        "--s2d", action="store_true", help="folded rows compute the first conv block by space-to-depth"
    )
    ap.add_argument("--relu-after-pool", action="store_true", help="folded rows: ReLU after the max-pools")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        size, npts, args.frames, args.steps, workers = (32, 32), 256, 64, 6, 0
        batches = [8, 32]
    else:
        size, npts, workers = (224, 224), 4096, 4
        batches = [int(b) for b in args.batches.split(",")]
    cfg = SyntheticConfig(image_size=size, num_points=npts, anomaly_fraction=0.5)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; images {size[0]}x{size[1]}, {npts} points", flush=True)

    rows: list[tuple[str, float, float, float]] = []  # name, samples/s, ms/step, GiB

    def mem() -> float:
        return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")

    t = time.perf_counter()
    data = generate(args.frames, seed=0, config=cfg, device=device)
    sync(device)
    print(
        f"generated {args.frames} training frames on {device.type} in {time.perf_counter() - t:.1f}s",
        flush=True,
    )
    gpu_fps = gen_speed(min(args.frames, 1024), cfg, device)
    cpu_fps = gen_speed(32 if not args.quick else 16, cfg, torch.device("cpu"))

    base_steps = max(args.steps * 4, 8) if not args.quick else args.steps
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sps, ms, _ = run_baseline(data, device, base_steps, warmup=20 if not args.quick else 2, workers=workers)
    rows.append(("baseline: original pipeline b8 fp32 DataLoader", sps, ms, mem()))
    base = sps
    print(f"baseline {sps:,.0f} samples/s", flush=True)

    variants: list[tuple[str, str, int, bool, bool, bool]] = []  # label, arch, batch, amp, compile, fold
    cuda = device.type == "cuda"
    for b in batches:
        variants.append((f"ours original b{b} fp32 eager", "original", b, False, False, False))
        variants.append(
            (
                f"ours original b{b} {'bf16' if cuda else 'fp32'} eager folded",
                "original",
                b,
                cuda,
                False,
                True,
            )
        )
        if cuda:
            variants.append((f"ours original b{b} bf16 eager", "original", b, True, False, False))
            if not args.no_compile and b >= 256:
                variants.append((f"ours original b{b} bf16 compile", "original", b, True, True, False))
                variants.append((f"ours original b{b} bf16 compile folded", "original", b, True, True, True))
    variants.append(
        ("ours fusion (default arch) b256 bf16", "fusion", 256 if not args.quick else 8, cuda, False, False)
    )
    variants = [v for v in variants if args.only in v[0]]
    options = {"s2d": args.s2d, "relu_after_pool": args.relu_after_pool}
    # The s2d stem's images: converted once (4 channels, bf16, channels_last), as a training set would be.
    fold_data = dataclasses.replace(data, image=s2d_images(data.image)) if args.s2d and cuda else data
    suffix = "".join(f" {k.replace('_', '-')}" for k, on in options.items() if on)
    for label, arch, b, amp, comp, fold in variants:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        label = label + suffix if fold else label
        try:
            opts = options if fold else {}
            model, one, close = make_ours(
                arch, device, b, amp=amp, compile_=comp, doctor=True, fold=fold, **opts
            )
            warm = 15 if comp else 5
            rows_data = fold_data if fold else data
            sps, ms = time_ours(one, rows_data, b, max(args.steps, 3), warm if not args.quick else 1, device)
            close()
        except Exception as exc:  # one failing variant must not lose the rest of the table
            print(f"{label}: failed: {exc!r}", flush=True)
            continue
        if diverged(model):  # e.g. the s2d stem under torch.compile on the H200 (bench/RESULTS.md)
            label += " DIVERGED (non-finite parameters)"
        rows.append((label + " +doctor", sps, ms, mem()))
        print(f"{label}: {sps:,.0f} samples/s", flush=True)

    print()
    w = max(52, *(len(r[0]) for r in rows))
    print(f"{'pipeline':{w}s} {'samples/s':>11s} {'ms/step':>9s} {'GiB':>6s} {'x base':>7s}")
    for label, sps, ms, gib in rows:
        print(f"{label:{w}s} {sps:11,.0f} {ms:9.2f} {gib:6.2f} {sps / base:7.2f}")
    print(
        f"synthetic generation: {gpu_fps:,.0f} frames/s on {device.type}, {cpu_fps:,.1f} frames/s on cpu "
        f"({gpu_fps / cpu_fps:,.0f}x)"
    )

    if args.quality:
        val = generate(
            1024 if not args.quick else 64, seed=99, config=cfg, device=device, scenario_offset=10_000
        )
        n = args.quality_samples if not args.quick else 256
        print(f"\nquality after {n:,} training samples (frame AUROC on {len(val)} held-out frames):")
        _, _, slow = run_baseline(data, device, n // 8, warmup=0, workers=workers)
        print(f"  slow path (baseline b8 fp32): AUROC {frame_auroc(slow, val, False):.4f}")
        b = max(batches)
        model, one, close = make_ours(
            "original",
            device,
            b,
            amp=cuda,
            compile_=cuda and not args.no_compile,
            doctor=True,
            fold=True,
            **options,
        )
        time_ours(one, fold_data, b, n // b, 0, device)
        print(f"  fast path (ours b{b}):        AUROC {frame_auroc(model, val, cuda):.4f}")
        t = time.perf_counter()
        time_ours(one, fold_data, b, 9 * n // b, 0, device)  # 10x the samples in total, what the speed buys
        close()
        print(
            f"  fast path, 10x the samples:   AUROC {frame_auroc(model, val, cuda):.4f} "
            f"(+{time.perf_counter() - t:.1f}s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
