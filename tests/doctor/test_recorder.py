"""Recorder: every signal against a plain-autograd reference, hooks, fail-open, one sync per flush."""

from __future__ import annotations

import copy
import math
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torch.nn.modules.module as module_hooks
import torch.optim.optimizer as optim_hooks
from torch import nn

from muvo_doctor import recorder as recorder_mod
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.observation import Observation
from muvo_doctor.recorder import Recorder, schedule, stats, watch
from muvo_doctor.recorder import modules as recorder_modules

Series = dict[str, dict[int, float]]


def series(obs: list[Observation]) -> Series:
    out: Series = defaultdict(dict)
    for o in obs:
        out[o.name][o.step] = o.value
    return out


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def batch(step: int, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(n, 4, generator=g)
    y = (torch.rand(n, generator=g) < 0.25).float()
    return x, y


@pytest.fixture(autouse=True)
def no_global_hooks_left() -> Iterator[None]:
    yield
    assert not module_hooks._global_forward_hooks
    assert not module_hooks._global_forward_pre_hooks
    assert not optim_hooks._global_optimizer_pre_hooks
    assert not optim_hooks._global_optimizer_post_hooks


def test_grad_norms_and_update_ratios_match_plain_autograd() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    got: list[Observation] = []
    ref_grad: dict[int, dict[str, float]] = {}
    ref_ratio: dict[int, dict[str, float]] = {}
    with watch(model, opt, sink=got.extend, sample_every=1) as rec:
        for step in range(3):
            x, y = batch(step)
            out = model(x).squeeze(-1)
            loss = F.binary_cross_entropy_with_logits(out, y)
            opt.zero_grad()
            loss.backward()
            mods = {"0": model[0], "2": model[2]}
            ref_grad[step] = {
                m: torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in mod.parameters()])).item()
                for m, mod in mods.items()
            }
            ref_grad[step]["total"] = math.sqrt(sum(v * v for v in ref_grad[step].values()))
            before = {
                m: torch.cat([p.detach().flatten() for p in mod.parameters()]) for m, mod in mods.items()
            }
            opt.step()
            after = {
                m: torch.cat([p.detach().flatten() for p in mod.parameters()]) for m, mod in mods.items()
            }
            ref_ratio[step] = {m: ((after[m] - before[m]).norm() / before[m].norm()).item() for m in mods}
            d = torch.cat([after[m] - before[m] for m in mods]).norm()
            ref_ratio[step]["total"] = (d / torch.cat([before[m] for m in mods]).norm()).item()
            rec.record(step, loss=loss, outputs=out, labels=y)
    s = series(got)
    for step in range(3):
        for m in ("0", "2", "total"):
            assert s[f"grad/norm/{m}"][step] == pytest.approx(ref_grad[step][m], rel=1e-5)
            assert s[f"update/ratio/{m}"][step] == pytest.approx(ref_ratio[step][m], rel=1e-4)
        assert s["param/frozen"][step] == 0.0
        assert s["nonfinite/grad"][step] == 0.0
        assert s["optim/lr"][step] == pytest.approx(0.1)
    assert not any(name.startswith("param/frozen/") for name in s)


class Parts(nn.Module):
    """a: trained; b: lr 0; c: in the optimizer but unused (no grad); d: not in the optimizer; e: frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d, self.e = (
            nn.Linear(4, 4),
            nn.Linear(4, 1),
            nn.Linear(4, 4),
            nn.Linear(4, 4),
            nn.Linear(4, 4),
        )
        self.e.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x) + self.d(x) + self.e(x)).squeeze(-1)


def test_frozen_no_grad_not_in_optimizer_and_zero_lr_fractions() -> None:
    model = Parts()
    opt = torch.optim.SGD(
        [
            {"params": [*model.a.parameters(), *model.c.parameters()]},
            {"params": model.b.parameters(), "lr": 0.0},
        ],
        lr=0.1,
    )
    got: list[Observation] = []
    with watch(model, opt, sink=got.extend, sample_every=1) as rec:
        for step in range(2):
            x, y = batch(step)
            out = model(x)
            loss = F.binary_cross_entropy_with_logits(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.record(step, loss=loss)
    s = series(got)
    trainable = 20 + 5 + 20 + 20  # a, b, c, d; e does not require grad
    assert s["param/no_grad"][1] == pytest.approx(20 / trainable)  # c
    assert s["param/not_in_optimizer"][1] == pytest.approx(20 / trainable)  # d
    assert s["param/zero_lr"][1] == pytest.approx(5 / trainable)  # b
    assert s["param/frozen"][1] == pytest.approx(45 / trainable)  # b, c, d never move
    for m in ("b", "c", "d"):
        assert s[f"param/frozen/{m}"][1] == 1.0
    assert "param/frozen/a" not in s
    assert s["update/ratio/b"][1] == 0.0 and s["update/ratio/a"][1] > 0


@pytest.mark.parametrize(
    ("order", "expected"),
    [("missing", 1.0), ("before_forward", 0.0), ("after_forward", 0.0), ("in_place", 0.0)],
)
def test_stale_gradients(order: str, expected: float) -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    got: list[Observation] = []
    with watch(model, opt, sink=got.extend, sample_every=1) as rec:
        for step in range(4):
            x, y = batch(step)
            if order == "before_forward":
                opt.zero_grad()
            out = model(x).squeeze(-1)
            loss = F.binary_cross_entropy_with_logits(out, y)
            if order == "after_forward":
                opt.zero_grad()
            if order == "in_place":
                opt.zero_grad(set_to_none=False)
            loss.backward()
            opt.step()
            rec.record(step, loss=loss)
    stale = series(got)["grad/stale"]
    assert sorted(stale) == [1, 2, 3]  # step 0 has no previous gradient
    assert set(stale.values()) == {expected}


def test_outputs_labels_and_accuracy_binary() -> None:
    model = mlp()
    got: list[Observation] = []
    rec = Recorder(model, None, sink=got.extend, sample_every=1)
    out = torch.tensor([-8.0, -1.0, 0.5, 7.0])
    y = torch.tensor([0.0, 1.0, 1.0, 1.0])
    rec.record(0, loss=torch.tensor(0.5), outputs=out, labels=y)
    probs = torch.tensor([0.0005, 0.2, 0.9, 0.9995])
    rec.record(1, loss=0.25, outputs=probs, labels=y)
    rec.record(2, loss=torch.tensor(0.1), outputs=torch.full((4,), 0.3), labels=torch.zeros(4))
    rec.close()
    s = series(got)
    assert s["train/loss"] == {0: 0.5, 1: 0.25, 2: pytest.approx(0.1)}
    assert s["output/mean"][0] == pytest.approx(out.mean().item())
    assert s["output/std"][0] == pytest.approx(out.std(correction=0).item())
    assert s["output/min"][0] == -8.0 and s["output/max"][0] == 7.0
    assert s["output/saturated"][0] == pytest.approx(0.5)  # |logit| > 6
    assert s["output/saturated"][1] == pytest.approx(0.5)  # probabilities within 1e-3 of 0 or 1
    assert s["output/std"][2] == pytest.approx(0.0, abs=1e-7)
    assert s["label/positive_fraction"] == {0: 0.75, 1: 0.75, 2: 0.0}
    assert s["train/acc"][0] == pytest.approx(0.75)  # logits thresholded at 0
    assert s["train/acc"][1] == pytest.approx(0.75)  # probabilities thresholded at 0.5
    assert s["train/acc"][2] == pytest.approx(1.0)
    assert s["label/classes"][2] == 2.0
    assert s["nonfinite/loss"] == {2: 0.0}


def test_multiclass_fractions_classes_and_accuracy() -> None:
    got: list[Observation] = []
    rec = Recorder(mlp(), None, sink=got.extend, sample_every=1)
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    rec.record(0, loss=1.0, outputs=logits, labels=torch.tensor([0, 1, 1, 0]))
    rec.record(1, loss=1.0, outputs=logits, labels=torch.tensor([2, 1, 2, -100]))  # ignore_index left out
    rec.close()
    s = series(got)
    assert s["label/fraction/0"] == {0: 0.5, 1: 0.0}
    assert s["label/fraction/1"] == {0: 0.5, 1: pytest.approx(1 / 3)}
    assert s["label/fraction/2"] == {1: pytest.approx(2 / 3)}
    assert s["label/classes"] == {0: 2.0, 1: 3.0}
    assert s["train/acc"][0] == pytest.approx(0.5)
    assert s["train/acc"][1] == pytest.approx(1 / 3)


def test_nonfinite_counts() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    got: list[Observation] = []
    with watch(model, opt, sink=got.extend, sample_every=1) as rec:
        x, y = batch(0)
        out = model(x).squeeze(-1)
        loss = (out * float("nan")).mean()
        loss.backward()
        opt.step()
        out = out.detach().clone()
        out[:3] = float("inf")
        rec.record(0, loss=loss, outputs=out, labels=y)
        rec.record(1, loss=1.0)
    s = series(got)
    assert s["nonfinite/loss"] == {1: 1.0}
    assert s["nonfinite/output"][0] == 3.0
    assert s["nonfinite/grad"][0] == 4.0  # every gradient tensor holds NaN
    assert math.isnan(s["train/loss"][0])


def test_sampling_and_flush_cadence() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls: list[list[Observation]] = []
    cfg = DoctorConfig(flush_every=2, flush_seconds=1e9)
    with watch(model, opt, config=cfg, sink=calls.append, sample_every=10) as rec:
        for step in range(25):
            x, y = batch(step)
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.record(step, loss=loss)
            if step == 9:
                assert calls == []  # one sampled step so far (0)
            if step == 10:
                assert len(calls) == 1  # flushed at the second sampled step (10)
    s = series([o for c in calls for o in c])
    assert sorted(s["train/loss"]) == list(range(25))  # the loss every step
    assert sorted(s["grad/norm/total"]) == [0, 10, 20]  # heavy statistics every 10th step
    fixed = Recorder(model, None, config=DoctorConfig(sample_every=1))  # explicit config: a fixed schedule
    assert fixed.sample_every == 1 and not fixed.adaptive


def test_default_schedule_stretches_to_the_overhead_budget() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    got: list[Observation] = []
    # A budget no real sample fits in: after the first two samples the gap goes to its maximum.
    with watch(model, opt, sink=got.extend, overhead_budget=1e-9) as rec:
        assert rec.adaptive and rec.sample_every == schedule.DEFAULT_SAMPLE_EVERY == 10
        for step in range(215):
            x, y = batch(step % 7)
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.record(step, loss=loss)
    assert sorted(series(got)["grad/norm/total"]) == [0, 10, 10 + schedule.MAX_SAMPLE_GAP]
    assert len(series(got)["train/loss"]) == 215


@pytest.mark.parametrize("mode", ["watch", "global"])
def test_the_budget_pays_for_all_work_around_a_sample(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    # The stale-gradient probe runs in the backward after a sampled step, outside the statistics. Made
    # slow here (0.2 s, about 100x a step), it must stretch the gap like any other cost of sampling:
    # with a 50% budget the next sample comes >= 25 steps later (when uncounted: every 10 steps).
    arm = Recorder._on_probe_grad

    def slow_probe(self: Recorder, p: torch.Tensor) -> object:
        hook = arm(self, p)

        def probe(grad: torch.Tensor) -> None:
            time.sleep(0.2)
            hook(grad)

        return probe

    monkeypatch.setattr(Recorder, "_on_probe_grad", slow_probe)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    got: list[Observation] = []
    if mode == "watch":
        rec = Recorder(model, opt, sink=got.extend, overhead_budget=0.5)
    else:
        rec = Recorder.install_global(sink=got.extend)
        rec.overhead_budget = 0.5
    try:
        for step in range(60):
            x, y = batch(step % 7)
            out = model(x).squeeze(-1)
            loss = F.binary_cross_entropy_with_logits(out, y)
            opt.zero_grad()
            if rec.is_global:
                rec.observe_backward(loss)
            loss.backward()
            opt.step()
            if not rec.is_global:
                rec.record(step, loss=loss, outputs=out, labels=y)
    finally:
        rec.close()
    sampled = sorted(series(got)["grad/norm/total"])
    assert sampled[:2] == [0, 10]  # the first gap is the default; the second sample sets the next one
    assert sampled[2:] == [] or sampled[2] - sampled[1] >= 25, sampled


def test_no_host_sync_between_flushes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    package = Path(recorder_mod.__file__).parent  # a sync in any recorder module counts
    for meth in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "nonzero"):
        original = getattr(torch.Tensor, meth)

        def spy(self: torch.Tensor, *a: object, _m: str = meth, _o: object = original, **k: object) -> object:
            if Path(sys._getframe(1).f_code.co_filename).parent == package:
                calls.append(_m)
            return _o(self, *a, **k)  # type: ignore[operator]

        monkeypatch.setattr(torch.Tensor, meth, spy)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(model, opt, config=DoctorConfig(flush_every=10_000, flush_seconds=1e9), sample_every=1)
    for step in range(6):
        x, y = batch(step)
        out = model(x).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(out, y)
        loss.backward()  # no zero_grad: the stale check runs too
        opt.step()
        rec.record(step, loss=loss, outputs=out, labels=y)
    assert calls == []
    obs = rec.flush()
    assert calls == ["tolist"]
    assert {"train/loss", "grad/norm/total", "update/ratio/total", "grad/stale", "train/acc"} <= {
        o.name for o in obs
    }
    rec.close()


def test_sink_failure_is_reported_once_and_training_goes_on(capsys: pytest.CaptureFixture[str]) -> None:
    def broken(obs: list[Observation]) -> None:
        raise RuntimeError("disk full")

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, sink=broken, config=DoctorConfig(flush_every=1), sample_every=1) as rec:
        for step in range(5):
            x, y = batch(step)
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.record(step, loss=loss)
    err = capsys.readouterr().err
    assert err.count("muvo-doctor:") == 1 and "disk full" in err
    assert len(rec.doctor.history.series("train/loss")) == 5  # the doctor still got everything


def test_internal_error_disables_the_recorder_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(*a: object) -> None:
        raise ValueError("bad stats")

    monkeypatch.setattr(stats, "_output_stats", boom)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(model, opt, sample_every=1)
    for step in range(3):
        x, y = batch(step)
        out = model(x).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.record(step, loss=loss, outputs=out, labels=y)  # must not raise
    err = capsys.readouterr().err
    assert err.count("muvo-doctor:") == 1 and "bad stats" in err and "disabled" in err
    assert not rec.enabled
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    rec.close()


def test_close_removes_every_hook() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, sample_every=1) as rec:
        x, y = batch(0)
        loss = F.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
        loss.backward()
        opt.step()  # arms the stale-gradient probe: a gradient hook on one parameter
        rec.record(0, loss=loss)
        assert any(p._backward_hooks for p in model.parameters())
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert not any(p._backward_hooks for p in model.parameters())
    n = len(rec.doctor.history.series("train/loss"))
    rec.record(1, loss=1.0)  # after close: ignored, no error
    assert len(rec.doctor.history.series("train/loss")) == n == 1


# ---------------------------------------------------------------------- global mode (the `run` wrapper)


def test_global_mode_loss_module_names_and_discovery() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.BCEWithLogitsLoss()
    got: list[Observation] = []
    rec = Recorder.install_global(sink=got.extend, config=DoctorConfig(sample_every=2))
    try:
        losses, ranges = {}, {}
        for step in range(6):
            x, y = batch(step)
            out = model(x).squeeze(-1)
            loss = crit(out, y)
            with torch.no_grad():
                crit(model(x).squeeze(-1), y)  # an evaluation loss: not the training loss
            losses[step] = loss.item()
            ranges[step] = (out.min().item(), out.max().item())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == 3:  # discovery over: the global forward hooks are gone
                assert not module_hooks._global_forward_hooks
                assert crit._forward_hooks
        assert rec.step == 6
    finally:
        rec.close()
    assert not crit._forward_hooks
    s = series(got)
    assert s["train/loss"] == pytest.approx(losses)
    assert sorted(s["loss_input/logits/min"]) == [0, 2, 4]
    for step in (0, 2, 4):
        assert s["loss_input/logits/min"][step] == pytest.approx(ranges[step][0])
        assert s["loss_input/logits/max"][step] == pytest.approx(ranges[step][1])
        assert 0 < s["label/positive_fraction"][step] < 1
        assert 0 <= s["train/acc"][step] <= 1
    assert {"grad/norm/0", "grad/norm/2", "update/ratio/0", "update/ratio/2"} <= set(s)
    assert s["param/not_in_optimizer"][0] == 0.0
    assert set(s["grad/stale"].values()) == {0.0}


def test_global_mode_observe_loss_call_and_backward() -> None:
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    got: list[Observation] = []
    rec = Recorder.install_global(sink=got.extend, sample_every=1)
    try:
        x = torch.randn(6, 4)
        y = torch.tensor([0, 0, 0, 1, 1, 2])
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        rec.observe_loss_call("cross_entropy", logits, y, loss)
        loss.backward()
        opt.step()
        logp = model(x)  # logits fed to NLL: log-probabilities above 0 show it
        loss2 = F.nll_loss(logp, y)
        rec.observe_loss_call("nll", logp, y, loss2)
        loss2.backward()
        opt.step()
        score = model(x).sigmoid()  # a loss written as a formula: only backward() sees it
        loss3 = score.mean() + 0.1 * score.std()
        rec.observe_backward(loss3)
        loss3.backward()
        opt.step()
    finally:
        rec.close()
    s = series(got)
    assert s["train/loss"] == pytest.approx({0: loss.item(), 1: loss2.item(), 2: loss3.item()})
    assert s["label/fraction/0"][0] == 0.5 and s["label/fraction/2"][0] == pytest.approx(1 / 6)
    assert s["label/classes"][0] == 3.0
    assert s["train/acc"][0] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert s["loss_input/logits/max"][0] == pytest.approx(logits.max().item())
    assert s["loss_input/logprobs/max"][1] == pytest.approx(logp.max().item())
    assert "group0.param0" not in str(list(s))  # named through the module that ran


@pytest.mark.parametrize("positional", [False, True])
def test_global_mode_optimizer_step_with_a_closure(positional: bool) -> None:
    # Lightning (and LBFGS) call optimizer.step(closure): forward, loss and backward run inside the
    # step, after the pre-step hook. The gradients, which parameters got one, and the loss belong to
    # that step: measured after the closure, not "no gradient" at step 0 and a loss filed one step late.
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    got: list[Observation] = []
    losses: list[float] = []
    norms: list[float] = []
    rec = Recorder.install_global(sink=got.extend, sample_every=1)
    try:
        for step in range(3):
            x, y = batch(step)

            def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
                opt.zero_grad(set_to_none=True)
                logits = model(x).squeeze(1)
                loss = F.binary_cross_entropy_with_logits(logits, y)
                rec.observe_loss_call("bce_with_logits", logits, y, loss)
                loss.backward()
                losses.append(loss.item())
                norms.append(
                    torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()
                )
                return loss

            opt.step(closure) if positional else opt.step(closure=closure)
    finally:
        rec.close()
    s = series(got)
    assert s["param/no_grad"] == {0: 0.0, 1: 0.0, 2: 0.0}
    assert s["train/loss"] == pytest.approx(dict(enumerate(losses)))
    assert s["grad/norm/total"] == pytest.approx(dict(enumerate(norms)), rel=1e-5)
    assert s["param/frozen"] == {0: 0.0, 1: 0.0, 2: 0.0}


def test_global_names_fall_back_to_group_and_index() -> None:
    w = nn.Parameter(torch.randn(3))
    opt = torch.optim.SGD([w], lr=0.1)
    got: list[Observation] = []
    rec = Recorder.install_global(sink=got.extend, sample_every=1)
    try:
        (w * w).sum().backward()
        opt.step()
    finally:
        rec.close()
    assert "grad/norm/group0.param0" in series(got)


def test_doctor_is_fed() -> None:
    model = copy.deepcopy(mlp())
    with watch(model, None) as rec:
        for step in range(3):
            rec.record(step, loss=torch.tensor(1.0 / (step + 1)))
    assert list(rec.doctor.history.series("train/loss").values) == pytest.approx([1.0, 0.5, 1 / 3])


def test_global_forward_hooks_leave_programs_that_do_not_train(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recorder_modules, "IDLE_FORWARDS", 5)
    model = mlp()
    got: list[Observation] = []
    rec = Recorder.install_global(sink=got.extend, sample_every=1)
    try:
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(2, 4))  # 3 modules a call: past the idle limit
        assert not module_hooks._global_forward_hooks
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(3):  # training starts: discovery again, names from the modules that ran
            x, y = batch(step)
            loss = nn.BCEWithLogitsLoss()(model(x).squeeze(-1), y)  # a new loss module every step
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert module_hooks._global_forward_hooks  # new loss modules each step: the global hook stays
    finally:
        rec.close()
    s = series(got)
    assert sorted(s["train/loss"]) == [1, 2]  # step 0's loss ran before the hooks came back
    assert 2 in s["grad/norm/0"] and 2 in s["grad/norm/2"]


@pytest.mark.parametrize("sigmoid_first", [True, False])
def test_explicit_mode_sees_the_input_of_a_loss_module(sigmoid_first: bool) -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.BCEWithLogitsLoss()  # outside the model: found by the global forward hook
    got: list[Observation] = []
    ranges = {}
    with watch(model, opt, sink=got.extend, sample_every=1) as rec:
        for step in range(12):
            x, y = batch(step)
            logits = model(x).squeeze(-1)
            fed = torch.sigmoid(logits) if sigmoid_first else logits
            loss = crit(fed, y)
            with torch.no_grad():
                crit(fed * 100, y)  # an evaluation-style call: not the training loss
            ranges[step] = (fed.min().item(), fed.max().item())
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.record(step, loss=loss, outputs=logits, labels=y)
            if step == 4:  # discovery over: only a hook on the loss module itself remains
                assert not module_hooks._global_forward_hooks
                assert crit._forward_hooks
    assert not crit._forward_hooks
    s = series(got)
    lo, hi = s["loss_input/logits/min"], s["loss_input/logits/max"]
    assert sorted(lo) == list(range(1, 12))  # from the first record on
    for step in lo:
        assert lo[step] == pytest.approx(ranges[step][0]) and hi[step] == pytest.approx(ranges[step][1])
    inside = all(0 <= lo[k] and hi[k] <= 1 for k in lo)
    assert inside == sigmoid_first
    assert ("wrong_loss_input" in {f.check for f in rec.doctor.report().findings}) == sigmoid_first


def test_a_recorder_never_used_leaves_no_global_hook() -> None:
    Recorder(mlp(), None)
    assert not module_hooks._global_forward_hooks


def _frame_and_point_step(model: nn.Module, n: int, step: int) -> tuple[torch.Tensor, ...]:
    """A fusion-like loss: frame BCE on (N,) targets + 0.5 * masked point BCE on (N, P) targets."""
    x, y = batch(step, n)
    frame = model(x).squeeze(-1)
    point_y = (torch.arange(n * 5).reshape(n, 5) % 2).float()  # half positives: unlike the frame labels
    point = frame[:, None].expand(n, 5) * 0.5
    frame_loss = F.binary_cross_entropy_with_logits(frame, y)
    point_loss = F.binary_cross_entropy_with_logits(point, point_y, reduction="none")
    return x, y, frame, point, point_y, frame_loss, point_loss


@pytest.mark.parametrize("order", ["frame_first", "point_first"])
def test_global_mode_two_loss_calls_main_is_the_per_sample_one(order: str) -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    got: list[Observation] = []
    totals, fracs, ranges = {}, {}, {}
    rec = Recorder.install_global(sink=got.extend, sample_every=1)
    try:
        for step in range(3):
            x, y, frame, point, point_y, fl, pl = _frame_and_point_step(model, 16, step)
            calls = [("f", frame, y, fl), ("p", point, point_y, pl)]
            for _, inp, tgt, out in calls if order == "frame_first" else calls[::-1]:
                rec.observe_loss_call("bce_with_logits", inp, tgt, out)
            total = fl + 0.5 * pl.mean()  # what the program prints and optimises
            rec.observe_backward(total)
            opt.zero_grad()
            total.backward()
            opt.step()
            totals[step], fracs[step] = total.item(), y.mean().item()
            ranges[step] = (frame.min().item(), frame.max().item())
    finally:
        rec.close()
    s = series(got)
    assert s["train/loss"] == pytest.approx(totals)  # the backward() tensor: it combines two calls
    assert s["label/positive_fraction"] == pytest.approx(fracs)  # from the frame call, not the points
    assert s["loss_input/logits/min"] == pytest.approx({k: v[0] for k, v in ranges.items()})


def test_global_mode_a_scaled_backward_keeps_the_loss_call_value() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    got: list[Observation] = []
    losses = {}
    rec = Recorder.install_global(sink=got.extend, sample_every=1)
    try:
        for step in range(3):
            x, y = batch(step)
            out = model(x).squeeze(-1)
            loss = F.binary_cross_entropy_with_logits(out, y)
            rec.observe_loss_call("bce_with_logits", out, y, loss)
            scaled = loss * torch.tensor(65536.0)  # GradScaler.scale(loss)
            rec.observe_backward(scaled)
            opt.zero_grad()
            scaled.backward()
            opt.step()
            losses[step] = loss.item()
    finally:
        rec.close()
    assert series(got)["train/loss"] == pytest.approx(losses)


def test_global_names_come_from_the_model_even_when_another_module_runs_first() -> None:
    aug = nn.Dropout(0.0)  # e.g. an augmentation module called, with grad enabled, before the model
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    got: list[Observation] = []
    rec = Recorder.install_global(sink=got.extend, sample_every=1)
    try:
        for step in range(5):
            x, y = batch(step)
            loss = F.binary_cross_entropy_with_logits(model(aug(x)).squeeze(-1), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert not module_hooks._global_forward_hooks  # every parameter named: discovery over
    finally:
        rec.close()
    names = {n for n in series(got) if n.startswith("grad/norm/")}
    assert names == {"grad/norm/0", "grad/norm/2", "grad/norm/total"}


def test_global_discovery_waits_for_a_model_called_late() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    got: list[Observation] = []
    rec = Recorder.install_global(sink=got.extend, sample_every=1)
    try:
        for _ in range(4):  # warm-up steps on a loss that calls no module (e.g. a prior fit)
            (sum(p.sum() for p in model.parameters()) * 0.0).backward()
            opt.step()
        assert module_hooks._global_forward_hooks  # parameters still unnamed: keep looking
        for step in range(3):
            x, y = batch(step)
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert not module_hooks._global_forward_hooks
    finally:
        rec.close()
    assert "grad/norm/0" in series(got)
