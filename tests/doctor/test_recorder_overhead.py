"""Recorder cost: between samples its hooks only count steps, and what it records stays the same."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.modules.module as module_hooks
import torch.optim.optimizer as optim_hooks
from torch import nn

from muvo_doctor.core.observation import Observation
from muvo_doctor.recorder import Recorder, schedule

ROOT = Path(__file__).resolve().parents[2]
STEPS = 13
EVERY = 4  # fixed schedule: samples at steps 0, 4, 8, 12


@pytest.fixture(autouse=True)
def no_global_hooks_left() -> Iterator[None]:
    yield
    assert not module_hooks._global_forward_hooks
    assert not optim_hooks._global_optimizer_pre_hooks
    assert not optim_hooks._global_optimizer_post_hooks


def setup() -> tuple[nn.Module, torch.optim.Optimizer, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    return model, torch.optim.Adam(model.parameters(), lr=1e-2), nn.CrossEntropyLoss()


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


def by_name(obs: list[Observation]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for o in obs:
        out[o.name][o.step] = o.value
    return out


def hooks_seen(opt: torch.optim.Optimizer, crit: nn.Module) -> tuple[int, int]:
    return len(opt._optimizer_step_pre_hooks) + len(optim_hooks._global_optimizer_pre_hooks), len(
        crit._forward_hooks
    )


def test_watch_hooks_run_only_around_samples_and_record_every_sampled_signal() -> None:
    model, opt, crit = setup()
    got: list[Observation] = []
    armed: dict[int, tuple[int, int]] = {}
    losses: dict[int, float] = {}
    rec = Recorder(model, opt, sink=got.extend, sample_every=EVERY)
    for step in range(STEPS):
        armed[step] = hooks_seen(opt, crit)  # what the forward and the optimizer step of this step meet
        x, y = data(step)
        out = model(x)
        loss = crit(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.record(step, loss=loss, outputs=out, labels=y)
        losses[step] = loss.item()
    rec.close()
    s = by_name(got)
    sampled = [0, 4, 8, 12]
    # Loss-module hooks exist once discovery (the first 3 steps) found the module; after that the
    # pre-hook and the loss hook are there on a sampled step and the step before it, and nowhere else.
    for step in range(3, STEPS):
        on = step in sampled or step + 1 in sampled
        assert armed[step] == ((1, 1) if on else (0, 0)), step
    assert s["train/loss"] == pytest.approx(losses)
    for name in ("grad/norm/total", "update/ratio/total", "output/mean", "train/acc"):
        assert sorted(s[name]) == sampled, name
    # Step 0: explicit mode looks for loss modules from the first optimizer step on, after its forward.
    assert sorted(s["loss_input/logits/min"]) == [4, 8, 12]


def test_global_recorder_keeps_the_loss_every_step_and_its_hooks_only_around_samples() -> None:
    model, opt, crit = setup()
    got: list[Observation] = []
    pre: dict[int, tuple[int, int]] = {}
    losses: dict[int, float] = {}
    rec = Recorder.install_global(sink=got.extend, sample_every=EVERY)
    try:
        for step in range(STEPS):
            pre[step] = hooks_seen(opt, crit)
            x, y = data(step)
            out = model(x)
            loss = crit(out, y)
            opt.zero_grad()
            rec.observe_backward(loss)  # as run's patched Tensor.backward does
            loss.backward()
            opt.step()
            losses[step] = loss.item()
    finally:
        rec.close()
    s = by_name(got)
    assert s["train/loss"] == pytest.approx(losses)
    # backward() runs on the loss module's output itself: after discovery (3 steps) the loss-module hook,
    # like the pre-hook, is there on a sampled step and the step before it only; train/loss still every step.
    for step in range(3, STEPS):
        on = int(step % EVERY in (0, EVERY - 1))
        assert pre[step] == (on, on), step
    for name in ("grad/norm/total", "update/ratio/total", "output/mean", "loss_input/logits/max"):
        assert sorted(s[name]) == [0, 4, 8, 12], name  # outputs: the loss module's input, every sample


@pytest.mark.parametrize("switch", [2, 5, 6, 7])
def test_global_recorder_never_records_a_scaled_loss_when_the_program_starts_scaling(switch: int) -> None:
    # From step `switch` on, backward() runs on the loss times a gradient scale (GradScaler switched on
    # mid-run): between samples the loss-module hook is off, so the recorder must notice from backward().
    model, opt, crit = setup()
    got: list[Observation] = []
    losses: dict[int, float] = {}
    rec = Recorder.install_global(sink=got.extend, sample_every=EVERY)
    try:
        for step in range(STEPS):
            x, y = data(step)
            loss = crit(model(x), y)
            opt.zero_grad()
            scaled = loss * torch.tensor(1024.0) if step >= switch else loss
            rec.observe_backward(scaled)
            scaled.backward()
            opt.step()
            losses[step] = loss.item()
    finally:
        rec.close()
    train_loss = by_name(got)["train/loss"]
    # The loss call's value or nothing: a step whose loss call nobody saw is left out, never scaled.
    assert train_loss == pytest.approx({k: v for k, v in losses.items() if k in train_loss})
    assert set(range(STEPS)) - set(train_loss) <= {switch}
    assert set(range(switch + 1, STEPS)) <= set(train_loss)  # the hooks are on every step from then on


def test_global_recorder_with_a_formula_of_two_loss_modules_keeps_the_formula_and_the_frame_call() -> None:
    # backward() on frame + 0.5 * point (the incident pipeline's shape): train/loss is that sum every step,
    # the loss-input statistics come from the per-sample (frame) call on sampled steps only.
    model, opt, _ = setup()
    frame_crit, point_crit = nn.CrossEntropyLoss(), nn.BCEWithLogitsLoss()
    got: list[Observation] = []
    hooked: dict[int, int] = {}
    totals, frame_max = {}, {}
    rec = Recorder.install_global(sink=got.extend, sample_every=EVERY)
    try:
        for step in range(STEPS):
            hooked[step] = len(frame_crit._forward_hooks) + len(point_crit._forward_hooks)
            x, y = data(step)
            out = model(x)
            total = frame_crit(out, y) + 0.5 * point_crit(out, (out > 0).float())
            opt.zero_grad()
            rec.observe_backward(total)
            total.backward()
            opt.step()
            totals[step], frame_max[step] = total.item(), out.max().item()
    finally:
        rec.close()
    s = by_name(got)
    assert s["train/loss"] == pytest.approx(totals)
    for step in range(3, STEPS):
        assert hooked[step] == (2 if step % EVERY in (0, EVERY - 1) else 0), step
    assert s["loss_input/logits/max"] == pytest.approx({k: frame_max[k] for k in (0, 4, 8, 12)})


def test_update_ratios_stay_right_when_the_snapshot_is_reused() -> None:
    model, opt, crit = setup()
    got: list[Observation] = []
    ref: dict[int, float] = {}
    rec = Recorder(model, opt, sink=got.extend, sample_every=2)
    for step in range(6):
        x, y = data(step)
        loss = crit(model(x), y)
        opt.zero_grad()
        loss.backward()
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        opt.step()
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        ref[step] = ((after - before).norm() / before.norm()).item()
        rec.record(step, loss=loss)
    rec.close()
    ratio = by_name(got)["update/ratio/total"]
    assert ratio == pytest.approx({k: v for k, v in ref.items() if k % 2 == 0}, rel=1e-4)


def test_overhead_bench_prints_intervals_and_writes_its_summary(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    args = [
        "--device",
        "cpu",
        "--arch",
        "mlp",
        "--batch",
        "4",
        "--repeats",
        "5",
        "--steps",
        "4",
        "--warmup",
        "2",
    ]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "overhead.py"), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "95%" in proc.stdout
    summary = json.loads(out.read_text())
    for mode in ("watch", "global"):
        lo, hi = summary["modes"][mode]["ratio_ci95"]
        assert lo <= summary["modes"][mode]["ratio"] <= hi
        assert len(summary["modes"][mode]["ms_per_step_rounds"]) == 5
        # A block runs from just after a sampled step to the end of the next one: one whole sampling gap.
        assert min(summary["modes"][mode]["steps_per_block_rounds"]) >= schedule.DEFAULT_SAMPLE_EVERY
        assert summary["hooks"][mode]["unsampled_us"] > 0


def test_overhead_bench_refuses_bad_flags_in_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "overhead.py"), "--modes", "watch", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "--modes" in proc.stderr and "Traceback" not in proc.stderr
