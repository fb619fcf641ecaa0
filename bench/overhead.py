"""Overhead of the doctor on a training step: the same loop with and without it, alternated in one process.

    python bench/overhead.py --device cpu --arch original --batch 8
    python bench/overhead.py --device cuda --arch original --batch 256

Modes: ``off`` (plain loop), ``watch`` (explicit ``muvo_doctor.watch`` + ``record()`` every step,
the Doctor evaluating at each flush), ``global`` (``Recorder.install_global``, what ``run`` injects).
Blocks of ``--steps`` timed steps run in a rotating order (off, watch, global, then watch, global,
off, ...), ``--repeats`` times, each after ``--warmup`` untimed steps with a fresh recorder. The
ratio is the median over repeats of a block's step time against the same repeat's ``off`` block,
which cancels slow drifts of the machine. The flush at the end of a block is timed apart and
amortized over the steps a real run makes between flushes (``flush_every`` samples or
``flush_seconds``, whichever comes first), so it is neither hidden nor charged every 100 steps.
On CUDA, ``torch.cuda.synchronize`` runs only around timed blocks, never per step, and the clock is
wall time; on CPU it is this process's CPU time with one torch thread (a shared CPU's load would
swamp wall-clock differences).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from muvo_doctor.config import DoctorConfig
from muvo_doctor.recorder import DEFAULT_SAMPLE_EVERY, Recorder


class _OriginalCopy(nn.Module):
    """The incident's 792,321-parameter model; used only when muvo_model.model is unavailable."""

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((4, 4)),
        )  # fmt: skip
        self.point_encoder = nn.Sequential(
            nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 256)
        )  # fmt: skip
        self.cross_attention = nn.MultiheadAttention(256, 4, batch_first=True)
        self.anomaly_head = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(), nn.Dropout(0.3), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 1)
        )  # fmt: skip

    def forward(self, image: torch.Tensor, points: torch.Tensor) -> dict[str, torch.Tensor]:
        img = F.pad(self.image_encoder(image).flatten(2).transpose(1, 2), (0, 128))  # (N, 16, 256)
        pts = self.point_encoder(points)  # (N, P, 256)
        att, _ = self.cross_attention(pts, img, img, need_weights=False)
        fused = torch.cat([att.mean(1), pts.mean(1)], dim=-1)  # (N, 512)
        return {"frame_logit": self.anomaly_head(fused).squeeze(-1)}


def build(arch: str) -> tuple[nn.Module, str]:
    try:
        from muvo_model.model import build_model
    except ImportError:
        if arch != "original":
            raise SystemExit(
                f"--arch {arch}: muvo_model.model is not importable; use --arch original"
            ) from None
        return _OriginalCopy(), "bench/overhead.py built-in copy"
    try:
        return build_model(arch), "muvo_model.model.build_model"  # type: ignore[arg-type]
    except ValueError as exc:
        raise SystemExit(f"--arch: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--arch", default="original", help="original | fusion (muvo_model.model.build_model)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=100, help="timed steps per block")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps at the start of each block")
    ap.add_argument("--repeats", type=int, default=20, help="blocks per mode")
    ap.add_argument("--modes", default="off,watch,global")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--points", type=int, default=1024)
    ap.add_argument("--sample-every", type=int, default=None, help=f"default: {DEFAULT_SAMPLE_EVERY}")
    ap.add_argument(
        "--amp", choices=("auto", "on", "off"), default="auto", help="bf16 autocast (auto: on CUDA)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default on CPU: 1)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    a = ap.parse_args(argv)
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("off", "watch", "global")]
    if bad or "off" not in modes:
        ap.error(f"--modes: use a comma list of off, watch, global including off (got {a.modes!r})")
    if min(a.batch, a.steps, a.repeats) < 1 or a.warmup < 0:
        ap.error("--batch, --steps and --repeats must be >= 1, --warmup >= 0")
    try:
        dev = torch.device(a.device)
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError) as exc:
        ap.error(f"--device {a.device}: not usable here ({exc})")
    cuda = dev.type == "cuda"
    amp = a.amp == "on" or (a.amp == "auto" and cuda)
    if a.threads or not cuda:
        torch.set_num_threads(a.threads or 1)
    # On CPU the process's own CPU time: the shared CPU's load would swamp wall-clock differences.
    clock = time.perf_counter if cuda else time.process_time

    torch.manual_seed(0)
    model, source = build(a.arch)
    model = model.to(dev)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    crit = nn.BCEWithLogitsLoss()
    g = torch.Generator(device="cpu").manual_seed(0)
    batches = []
    for _ in range(4):  # cycled: data loading is not what is measured
        img = torch.rand(a.batch, 3, a.image_size, a.image_size, generator=g)
        pts = torch.randn(a.batch, a.points, 4, generator=g)
        y = (torch.rand(a.batch, generator=g) < 0.1).float()
        img = img.to(dev).contiguous(memory_format=torch.channels_last) if cuda else img
        batches.append((img, pts.to(dev), y.to(dev)))

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    def step_fn(i: int, rec: Recorder | None) -> None:
        img, pts, y = batches[i % len(batches)]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            out = model(img, pts)["frame_logit"]
        loss = crit(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if rec is not None and not rec.is_global:
            rec.record(i, loss=loss, outputs=out, labels=y)

    cfg = DoctorConfig()  # the defaults a user gets
    make: dict[str, Callable[[], Recorder | None]] = {
        "off": lambda: None,
        "watch": lambda: Recorder(model, opt, config=cfg, sample_every=a.sample_every),
        "global": lambda: Recorder.install_global(
            config=cfg, sink=lambda obs: None, sample_every=a.sample_every
        ),
    }
    times: dict[str, list[float]] = {m: [] for m in modes}  # ms per step, one entry per repeat
    flush_ms: dict[str, list[float]] = {m: [] for m in modes}
    samples: dict[str, list[int]] = {m: [] for m in modes}  # sampled steps per block (adaptive schedule)
    step = 0
    for r in range(a.repeats):
        order = modes[r % len(modes) :] + modes[: r % len(modes)]
        for mode in order:
            rec = make[mode]()
            for _ in range(a.warmup):
                step_fn(step, rec)
                step += 1
            sync()
            n0 = rec._n_samples if rec is not None else 0
            t0 = clock()
            for _ in range(a.steps):
                step_fn(step, rec)
                step += 1
            sync()
            times[mode].append((clock() - t0) / a.steps * 1e3)
            samples[mode].append(rec._n_samples - n0 if rec is not None else 0)
            t0 = clock()
            if rec is not None:
                rec.flush()  # timed apart: a real run flushes far less often than once a block
            sync()
            flush_ms[mode].append((clock() - t0) * 1e3)
            if rec is not None:
                if not rec.enabled:
                    print(f"muvo-doctor recorder disabled itself in mode {mode}", file=sys.stderr)
                    return 1
                rec.close()

    sample_every = a.sample_every or f"adaptive (from {DEFAULT_SAMPLE_EVERY})"
    print(
        f"overhead: device={dev} ({torch.cuda.get_device_name(dev) if cuda else 'cpu'}), arch={a.arch} "
        f"({n_params:,} params, {source}), batch={a.batch}, amp={'bf16' if amp else 'off'}, "
        f"sample_every={sample_every}, {a.repeats} x {a.steps} steps per mode, torch {torch.__version__}, "
        f"clock={'wall' if cuda else f'process CPU time, {torch.get_num_threads()} thread(s)'}"
    )
    print(
        "ratio: median over repeats of (mode's ms/step + its flush amortized) / the same repeat's off ms/step;\n"
        "a flush is amortized over min(flush_every x steps per sample, flush_seconds / step time) steps"
    )
    head = f"{'mode':<8} {'ms/step':>8} {'flush ms':>9} {'steps/flush':>11} {'sampled':>8} {'ratio':>7} {'overhead':>9}"
    print(head)
    rows: list[dict[str, Any]] = []
    for mode in modes:
        med = statistics.median(times[mode])
        n_samp = sum(samples[mode]) / len(samples[mode])
        per_flush = 0.0
        if mode != "off":
            steps_per_sample = a.steps / n_samp if n_samp else float(a.steps)
            per_flush = min(cfg.flush_every * steps_per_sample, cfg.flush_seconds * 1e3 / med)
        fl = statistics.median(flush_ms[mode]) if mode != "off" else 0.0
        ratios = [
            (t + (f / per_flush if per_flush else 0.0)) / off
            for t, f, off in zip(times[mode], flush_ms[mode], times["off"], strict=True)
        ]
        ratio = statistics.median(ratios)
        print(
            f"{mode:<8} {med:>8.3f} {fl:>9.2f} {per_flush:>11.0f} {n_samp:>8.1f} {ratio:>7.4f} {100 * (ratio - 1):>+8.2f}%"
        )
        rows.append(
            {
                "mode": mode,
                "ms_per_step": times[mode],
                "flush_ms": flush_ms[mode],
                "sampled": samples[mode],
                "median_ms": med,
                "ratio": ratio,
            }
        )
    if a.json:
        meta = {
            "device": str(dev),
            "arch": a.arch,
            "batch": a.batch,
            "amp": amp,
            "sample_every": sample_every,
        }
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({**meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
