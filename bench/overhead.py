"""Overhead of the doctor on a training step: off, watch and global interleaved in short blocks, one process.

    python bench/overhead.py --device cpu --arch mlp --clock cpu          # tiny MLP, ~4 ms step, 1 thread
    O="--device cuda --arch original --image-size 224 --points 4096"
    python bench/overhead.py $O --batch 8 --json overhead_b8.json
    python bench/overhead.py $O --batch 256 --repeats 12 --json overhead_b256.json

Modes: ``off`` (plain loop), ``watch`` (``Recorder(model, opt)`` + ``record()`` every step, what
``muvo_doctor.watch`` does), ``global`` (``Recorder.install_global`` and ``observe_backward`` before
each ``backward()``: what ``run`` injects, its patched ``Tensor.backward`` included).

Method: one model, one optimizer and one recorder per mode for the whole run. Modes take turns in
sub-blocks of ``--steps`` steps (default 1: step by step), in a random order each turn (``--seed``);
while one mode steps, the other recorders' hooks are parked (taken out of torch's hook tables and put
back, outside the timed part), so every step is a plain step of its own mode. A round lasts until every
recorder has run one whole sampling gap (``--samples`` sampled steps, starting right after a sampled
step, each recorder first warmed up for ``--warmup`` steps and two samples): a mode's round mean is its
amortized cost exactly, and ``off`` steps are interleaved with the others all along. Time is CUDA events
around each sub-block on a GPU (one sync per sub-block, outside the events), ``perf_counter_ns`` on a CPU
(``--clock cpu``: this process's CPU time, for a machine others are loading). A mode's ratio in a round is
its ms/step against the same round's ``off`` steps: the machine's drifts and bursts hit neighbouring steps
of all modes alike (100-step blocks per mode spread the tiny MLP's ratios over +-5%; single steps,
+-1%). The summary is the median over rounds with a 95% bootstrap interval (rounds resampled), and the
same for the absolute cost (ms per step).

The recorder's flush (one host sync, observations built) is timed apart after each block and
amortized over the steps a real run makes between flushes (``flush_every`` samples or
``flush_seconds``, whichever comes first); inside a block the recorder never flushes. The doctor's
evaluations (watch only; at grid steps, 25 steps apart early in a run, 2% of the step count later)
are timed apart too and printed on their own line: their cost depends on how long the run is.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.recorder import Recorder
from muvo_doctor.recorder.schedule import DEFAULT_SAMPLE_EVERY, MAX_SAMPLE_GAP

MODES = ("off", "watch", "global")
BOOTSTRAP = 10_000  # resamples of the rounds for the 95% interval


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


def tiny_mlp() -> nn.Module:
    """128 -> 512 -> 512 -> 10 (333k parameters): ~4 ms a step at batch 64 on one CPU thread."""
    return nn.Sequential(nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def build(arch: str) -> tuple[nn.Module, str]:
    if arch == "mlp":
        return tiny_mlp(), "bench/overhead.py tiny MLP"
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


def bootstrap_median(values: list[float], rng: np.random.Generator) -> tuple[float, float, float]:
    """Median of ``values`` and its 95% percentile-bootstrap interval."""
    v = np.asarray(values, dtype=np.float64)
    meds = np.median(v[rng.integers(0, len(v), size=(BOOTSTRAP, len(v)))], axis=1)
    lo, hi = np.percentile(meds, [2.5, 97.5])
    return float(np.median(v)), float(lo), float(hi)


class _HookTimed(Recorder):
    """A recorder that adds the host time spent inside each of its entry points to ``spent_ns``.

    Every hook it registers goes through ``_guard`` (or is ``_counter``'s); ``record`` and
    ``observe_backward`` are called by the training loop. Torch's own cost of calling a hook is not included.
    """

    spent_ns = 0

    def _guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        hook = super()._guard(fn)

        def timed(*args: Any, **kwargs: Any) -> None:
            t0 = time.perf_counter_ns()
            hook(*args, **kwargs)
            _HookTimed.spent_ns += time.perf_counter_ns() - t0

        return timed

    def _counter(self, st: Any) -> Callable[..., None]:
        count = super()._counter(st)  # explicit mode's optimizer post-hook between samples: not guarded

        def timed(*args: Any) -> None:
            t0 = time.perf_counter_ns()
            count(*args)
            _HookTimed.spent_ns += time.perf_counter_ns() - t0

        return timed

    def record(self, step: int, **kwargs: Any) -> None:
        t0 = time.perf_counter_ns()
        super().record(step, **kwargs)
        _HookTimed.spent_ns += time.perf_counter_ns() - t0

    def observe_backward(self, loss: torch.Tensor) -> None:
        t0 = time.perf_counter_ns()
        super().observe_backward(loss)
        _HookTimed.spent_ns += time.perf_counter_ns() - t0


class _Timer:
    """Block timer: CUDA events on a GPU (read after one sync per block), a host clock on a CPU."""

    def __init__(self, dev: torch.device, clock: str) -> None:
        self.cuda = dev.type == "cuda"
        self.dev = dev
        self.ns = time.perf_counter_ns if clock == "wall" else time.process_time_ns

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.dev)

    def mark(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return self.ns()

    def ms(self, a: Any, b: Any) -> float:
        """Milliseconds between two marks (call after ``sync``)."""
        return a.elapsed_time(b) if self.cuda else (b - a) / 1e6


class _HookTables:
    """Torch's hook tables, so that a recorder's hooks can be parked while another mode's steps run.

    Modes share one model and one optimizer (two copies would differ in memory placement, a bias of
    its own). A recorder registers only official hooks, into these tables: the global module and
    optimizer tables, the optimizer's and each module's own, and a parameter's gradient hooks. Entries
    present before any recorder existed are never moved.
    """

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, crit: nn.Module) -> None:
        from torch.nn.modules import module as module_hooks
        from torch.optim import optimizer as optim_hooks

        self.fixed: list[dict[Any, Any]] = [
            v
            for mod in (module_hooks, optim_hooks)
            for k, v in vars(mod).items()
            if k.startswith("_global_") and isinstance(v, dict)
        ]
        self.fixed += [v for k, v in vars(opt).items() if "hook" in k and isinstance(v, dict)]
        self.modules = [*model.modules(), crit]
        self.params = list(model.parameters())
        self.baseline = {id(t): set(t) for t in self.tables()}
        self.parked_at: dict[int, float] = {}

    def tables(self) -> list[dict[Any, Any]]:
        found = list(self.fixed)
        for m in self.modules:
            found += [v for k, v in vars(m).items() if "hook" in k and isinstance(v, dict)]
        found += [p._backward_hooks for p in self.params if p._backward_hooks]
        return found

    def park(self, rec: Recorder) -> list[tuple[dict[Any, Any], dict[Any, Any]]]:
        """Take every hook registered since construction out of its table; returns them for ``restore``."""
        self.parked_at[id(rec)] = time.perf_counter()
        parked = []
        for t in self.tables():
            keep = self.baseline.get(id(t), set())
            moved = {k: v for k, v in t.items() if k not in keep}
            for k in moved:
                del t[k]
            if moved:
                parked.append((t, moved))
        return parked

    def restore(self, rec: Recorder, parked: list[tuple[dict[Any, Any], dict[Any, Any]]]) -> None:
        for t, moved in parked:
            t.update(moved)
        # The adaptive schedule paces samples by the wall time between its steps: the time parked is not
        # a step of this recorder's run (counted, it shortened the sampling gap 3x).
        parked = time.perf_counter() - self.parked_at.pop(id(rec))
        rec._last_tick += parked  # the gap being timed: its start and its last step's end
        rec._gap_end += parked


def _until_sample(
    step_fn: Callable[[int, Recorder | None], None], step: int, rec: Recorder, limit: int
) -> int:
    """Steps until the recorder took one more sample (``limit`` at most); returns the next step."""
    target = rec._n_samples + 1
    for _ in range(limit):
        step_fn(step, rec)
        step += 1
        if rec._n_samples >= target:
            return step
    raise SystemExit(f"overhead.py: no sampled step in {limit} steps; the recorder does not sample")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--arch", default="original", help="mlp (tiny MLP) | original | fusion (muvo_model.model.build_model)"
    )
    ap.add_argument("--batch", type=int, default=None, help="default: 64 for mlp, 8 otherwise")
    ap.add_argument("--steps", type=int, default=1, help="steps per turn of a mode (interleaved sub-block)")
    ap.add_argument(
        "--samples", type=int, default=1, help="sampled steps per watch/global block (one sampling gap each)"
    )
    ap.add_argument(
        "--warmup", type=int, default=10, help="untimed steps at least at the start of each block"
    )
    ap.add_argument("--repeats", type=int, default=60, help="rounds (one block per mode each)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--points", type=int, default=1024)
    ap.add_argument(
        "--sample-every", type=int, default=None, help=f"default: adaptive from {DEFAULT_SAMPLE_EVERY}"
    )
    ap.add_argument(
        "--amp", choices=("auto", "on", "off"), default="auto", help="bf16 autocast (auto: on CUDA)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default on CPU: 1)")
    ap.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="CPU only: perf_counter or CPU time"
    )
    ap.add_argument("--seed", type=int, default=0, help="block order and bootstrap")
    ap.add_argument(
        "--json", default=None, help="also write the summary and the per-round numbers to this file"
    )
    a = ap.parse_args(argv)
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or "off" not in modes or len(set(modes)) != len(modes):
        ap.error(f"--modes: use a comma list of off, watch, global including off (got {a.modes!r})")
    batch = a.batch if a.batch is not None else (64 if a.arch == "mlp" else 8)
    if min(batch, a.steps, a.samples, a.repeats) < 1 or a.warmup < 0:
        ap.error("--batch, --steps, --samples and --repeats must be >= 1, --warmup >= 0")
    if a.repeats < 5:
        ap.error("--repeats: at least 5 rounds for an interval")
    try:
        dev = torch.device(a.device)
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError) as exc:
        ap.error(f"--device {a.device}: not usable here ({exc})")
    cuda = dev.type == "cuda"
    amp = a.amp == "on" or (a.amp == "auto" and cuda)
    if a.threads or not cuda:
        torch.set_num_threads(a.threads or 1)
    if a.json:
        try:
            open(a.json, "a", encoding="utf-8").close()
        except OSError as exc:
            ap.error(f"--json {a.json}: cannot write there ({exc.strerror})")
    timer = _Timer(dev, "wall" if cuda else a.clock)

    torch.manual_seed(0)
    model, source = build(a.arch)
    model = model.to(dev)
    if cuda and a.arch != "mlp":
        model = model.to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    g = torch.Generator(device="cpu").manual_seed(0)
    batches: list[tuple[torch.Tensor, ...]] = []
    for _ in range(4):  # cycled: data loading is not what is measured
        if a.arch == "mlp":
            x = torch.randn(batch, 128, generator=g)
            y = torch.randint(0, 10, (batch,), generator=g)
            batches.append((x.to(dev), y.to(dev)))
            continue
        img = torch.rand(batch, 3, a.image_size, a.image_size, generator=g)
        pts = torch.randn(batch, a.points, 4, generator=g)
        y = (torch.rand(batch, generator=g) < 0.1).float()
        img = img.to(dev).contiguous(memory_format=torch.channels_last) if cuda else img.to(dev)
        batches.append((img, pts.to(dev), y.to(dev)))
    crit: nn.Module = nn.CrossEntropyLoss() if a.arch == "mlp" else nn.BCEWithLogitsLoss()

    def step_fn(i: int, rec: Recorder | None) -> None:
        *inputs, y = batches[i % len(batches)]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            out = model(*inputs)
        out = out if a.arch == "mlp" else out["frame_logit"]
        loss = crit(out.float(), y)
        opt.zero_grad(set_to_none=True)
        if rec is not None and rec.is_global:
            rec.observe_backward(loss)  # what run's patched Tensor.backward calls
        loss.backward()
        opt.step()
        if rec is not None and not rec.is_global:
            rec.record(i, loss=loss, outputs=out, labels=y)

    user = DoctorConfig()  # the defaults a user gets: amortization uses their flush schedule
    # Inside a block the recorder never flushes (timed apart); sampling and judging as the user's.
    cfg = user.model_copy(update={"flush_every": 1 << 30, "flush_seconds": 1e9})
    eval_ms: list[float] = []

    def timed_doctor(rec: Recorder) -> Recorder:
        doc = rec.doctor
        if doc is not None:
            evaluate = doc.evaluate

            def timed() -> Any:
                t0 = time.perf_counter_ns()
                try:
                    return evaluate()
                finally:
                    eval_ms.append((time.perf_counter_ns() - t0) / 1e6)

            doc.evaluate = timed  # type: ignore[method-assign]
        return rec

    make: dict[str, Callable[[], Recorder | None]] = {
        "off": lambda: None,
        "watch": lambda: timed_doctor(Recorder(model, opt, config=cfg, sample_every=a.sample_every)),
        "global": lambda: Recorder.install_global(
            config=cfg, sink=lambda obs: None, sample_every=a.sample_every
        ),
    }
    times: dict[str, list[float]] = {m: [] for m in modes}  # ms per step, one entry per round
    flush_ms: dict[str, list[float]] = {m: [] for m in modes}  # recorder flush, doctor evaluations excluded
    block_steps: dict[str, list[int]] = {m: [] for m in modes}  # timed steps per round
    # A sampled step at least every this many steps (the adaptive gap's cap, or a fixed schedule's).
    longest_gap = max(MAX_SAMPLE_GAP, a.sample_every or 0) + 1
    order_rng = random.Random(a.seed)
    step = 0

    for _ in range(a.warmup + 10):  # caches, allocator, first-call costs: before any recorder exists
        step_fn(step, None)
        step += 1
    hooks_table = _HookTables(model, opt, crit)
    recs: dict[str, Recorder] = {}
    parked: dict[str, list[tuple[dict[Any, Any], dict[Any, Any]]]] = {}
    for mode in modes:
        if mode == "off":
            continue
        rec = recs[mode] = make[mode]()  # type: ignore[assignment]
        for _ in range(a.warmup):
            step_fn(step, rec)
            step += 1
        while rec._n_samples < 2:  # the adaptive gap is set at the second sample
            step = _until_sample(step_fn, step, rec, longest_gap)
        step = _until_sample(step_fn, step, rec, longest_gap)  # rounds start right after a sampled step
        rec.flush()
        parked[mode] = hooks_table.park(rec)

    for _ in range(a.repeats):
        # One round: every recorder runs one whole sampling gap, in short sub-blocks interleaved with
        # the other modes' (random order each turn), so a drift of the machine hits all modes alike.
        target = {m: recs[m]._n_samples + a.samples for m in recs}
        spent = {m: 0.0 for m in modes}
        taken = {m: 0 for m in modes}
        open_modes = set(recs)
        while open_modes:
            order = modes[:]
            order_rng.shuffle(order)
            for mode in order:
                if mode != "off" and mode not in open_modes:
                    continue
                rec = recs.get(mode)
                if rec is not None:
                    hooks_table.restore(rec, parked.pop(mode))
                timer.sync()
                t0 = timer.mark()
                n = 0
                while n < a.steps:
                    step_fn(step, rec)
                    step += 1
                    n += 1
                    # The round ends once its sample is taken and its stale-gradient probe (armed for the
                    # next backward) has run: no hook of this mode is left for another mode's step.
                    if rec is not None and rec._n_samples >= target[mode] and rec._probe_handle is None:
                        open_modes.discard(mode)
                        break
                if rec is not None and n >= a.samples * longest_gap * 2 and mode in open_modes:
                    raise SystemExit(
                        f"overhead.py: no sampled step in {n} steps; the recorder does not sample"
                    )
                t1 = timer.mark()
                timer.sync()
                spent[mode] += timer.ms(t0, t1)
                taken[mode] += n
                if rec is not None:
                    parked[mode] = hooks_table.park(rec)
        for mode in modes:
            times[mode].append(spent[mode] / taken[mode])
            block_steps[mode].append(taken[mode])
            rec = recs.get(mode)
            if rec is None:
                flush_ms[mode].append(0.0)
                continue
            hooks_table.restore(rec, parked.pop(mode))
            n_eval = len(eval_ms)
            timer.sync()
            flushed_at = time.perf_counter()
            t1 = timer.mark()
            rec.flush()
            t2 = timer.mark()
            timer.sync()
            flush_ms[mode].append(max(0.0, timer.ms(t1, t2) - sum(eval_ms[n_eval:])))
            flush_s = time.perf_counter() - flushed_at  # the flush is not a step of its gap
            rec._last_tick += flush_s
            rec._gap_end += flush_s
            parked[mode] = hooks_table.park(rec)
    for mode, rec in recs.items():
        hooks_table.restore(rec, parked.pop(mode))
        if not rec.enabled:
            print(f"muvo-doctor recorder disabled itself in mode {mode}", file=sys.stderr)
            return 1
        rec.close()

    # Host time inside the recorder per step, one extra block per mode (instrumented, so not timed above):
    # medians per step, robust to the machine's other load, sampled and unsampled steps apart.
    hooks: dict[str, dict[str, float]] = {}
    for mode, cls in (("watch", _HookTimed), ("global", _HookTimed)):
        if mode not in modes:
            continue
        if mode == "watch":
            rec = timed_doctor(cls(model, opt, config=cfg, sample_every=a.sample_every))
        else:
            rec = cls.install_global(config=cfg, sink=lambda obs: None, sample_every=a.sample_every)
        for _ in range(a.warmup):
            step_fn(step, rec)
            step += 1
        while rec._n_samples < 3:  # past the first (setup) and second (gap-setting) samples, as the blocks
            step = _until_sample(step_fn, step, rec, longest_gap)
        plain: list[float] = []
        sampled: list[float] = []
        while len(sampled) < 4 * a.samples:  # whole sampling gaps, as the timed blocks
            if len(plain) + len(sampled) > 4 * a.samples * longest_gap:
                raise SystemExit(
                    "overhead.py: no sampled step in the host-time block; the recorder does not sample"
                )
            n0, t0 = rec._n_samples, _HookTimed.spent_ns
            step_fn(step, rec)
            step += 1
            (sampled if rec._n_samples > n0 else plain).append((_HookTimed.spent_ns - t0) / 1e3)
        rec.close()
        every = (len(plain) + len(sampled)) / len(sampled)
        us_plain = statistics.median(plain) if plain else 0.0
        us_sampled = statistics.median(sampled) if sampled else 0.0
        hooks[mode] = {
            "unsampled_us": us_plain,
            "sampled_us": us_sampled,
            "steps_per_sample": every,
            "us_per_step": us_plain + (us_sampled - us_plain) / every,
        }

    rng = np.random.default_rng(a.seed)
    clock = "CUDA events" if cuda else ("perf_counter_ns" if a.clock == "wall" else "process CPU time")
    print(
        f"overhead: device={dev} ({torch.cuda.get_device_name(dev) if cuda else 'cpu'}), arch={a.arch} "
        f"({n_params:,} params, {source}), batch={batch}, amp={'bf16' if amp else 'off'}, "
        f"sample_every={a.sample_every or f'adaptive from {DEFAULT_SAMPLE_EVERY}'}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU thread(s), clock={clock}"
    )
    print(
        f"{a.repeats} rounds; modes interleaved {a.steps} step(s) a turn in random order, each recorder one "
        f"sampling gap ({a.samples} sampled step(s)) a round; per round: mode / off (flush amortized); "
        "median and 95% bootstrap interval over rounds"
    )
    print(
        f"{'mode':<7} {'ms/step':>8} {'flush ms':>8} {'steps/flush':>11} {'steps/round':>11} "
        f"{'overhead [95% CI]':>26} {'ms/step added [95% CI]':>30}"
    )
    summary: dict[str, Any] = {}
    for mode in modes:
        med = statistics.median(times[mode])
        steps = statistics.median(block_steps[mode])
        per_flush = 0.0
        if mode != "off":
            steps_per_sample = sum(block_steps[mode]) / (a.samples * len(block_steps[mode]))
            per_flush = min(user.flush_every * steps_per_sample, user.flush_seconds * 1e3 / med)
        cost = [
            t + (f / per_flush if per_flush else 0.0)
            for t, f in zip(times[mode], flush_ms[mode], strict=True)
        ]
        ratio = bootstrap_median([c / off for c, off in zip(cost, times["off"], strict=True)], rng)
        added = bootstrap_median([c - off for c, off in zip(cost, times["off"], strict=True)], rng)
        fl = statistics.median(flush_ms[mode]) if mode != "off" else 0.0
        pct = f"{100 * (ratio[0] - 1):+.2f}% [{100 * (ratio[1] - 1):+.2f}, {100 * (ratio[2] - 1):+.2f}]"
        ms = f"{added[0]:+.4f} [{added[1]:+.4f}, {added[2]:+.4f}]"
        print(f"{mode:<7} {med:>8.3f} {fl:>8.2f} {per_flush:>11.0f} {steps:>11.0f} {pct:>26} {ms:>30}")
        summary[mode] = {
            "median_ms_per_step": med,
            "ratio": ratio[0],
            "ratio_ci95": [ratio[1], ratio[2]],
            "added_ms_per_step": added[0],
            "added_ms_ci95": [added[1], added[2]],
            "flush_ms": fl,
            "steps_per_flush": per_flush,
            "sampled_per_block": a.samples if mode != "off" else 0,
            "steps_per_block": steps,
            "steps_per_block_rounds": block_steps[mode],
            "ms_per_step_rounds": times[mode],
            "flush_ms_rounds": flush_ms[mode],
        }
    for mode, h in hooks.items():
        print(
            f"{mode:<7} host time inside the recorder (perf_counter_ns around its hooks, medians): "
            f"{h['unsampled_us']:.1f} us on an unsampled step, {h['sampled_us'] / 1e3:.2f} ms on a sampled step, "
            f"one in {h['steps_per_sample']:.0f} steps: {h['us_per_step']:.1f} us/step"
        )
    doctor: dict[str, Any] = {}
    if eval_ms:
        off_ms = statistics.median(times["off"])
        ev = statistics.median(eval_ms)
        at = {
            s: max(user.evaluate_every_steps, int(s * user.evaluate_every_fraction)) for s in (1_000, 20_000)
        }
        doctor = {"evaluations": len(eval_ms), "median_ms": ev, "max_ms": max(eval_ms)}
        print(
            f"doctor (watch, in-process): {len(eval_ms)} evaluations, median {ev:.2f} ms (max {max(eval_ms):.2f}) "
            f"on histories of <= {max(max(v) for v in block_steps.values()) + a.warmup + 2 * longest_gap} "
            "steps, not in the ratios above; one every "
            + ", ".join(
                f"{g} steps at step {s:,} (+{ev / g:.4f} ms/step, {100 * ev / g / off_ms:.2f}%)"
                for s, g in at.items()
            )
        )
    if a.json:
        meta = {
            "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if cuda else "cpu",
            "arch": a.arch,
            "params": n_params,
            "batch": batch,
            "amp": amp,
            "image_size": a.image_size,
            "points": a.points,
            "sample_every": a.sample_every,
            "steps": a.steps,
            "samples": a.samples,
            "warmup": a.warmup,
            "repeats": a.repeats,
            "clock": clock,
            "torch": torch.__version__,
            "argv": sys.argv[1:] if argv is None else argv,
        }
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({**meta, "modes": summary, "hooks": hooks, "doctor": doctor}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
