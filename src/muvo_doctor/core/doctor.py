"""The Doctor: observations in; findings with a lifecycle, evidence of learning and a verdict out.

Three rules make the verdict something to act on (docs/contract.md, Verdicts):

- **Steps, not seconds.** The checks run at a grid of recorded steps (every
  ``evaluate_every_steps``, growing with the run, see :func:`next_grid_step`): an evaluation at grid
  step G sees exactly the observations up to step G, run when the first observation past G arrives
  (or at the end). The same observations in the same order give the same findings, first steps and
  verdict, however the bytes were chunked or how fast the machine is.
- **A lifecycle.** A finding holds from the step its check first returned it; while it holds, the
  latest evaluation sets its severity, message and evidence. When an evaluation no longer returns
  it, it is resolved (``resolved_step`` = that evaluation's step) and kept with the severity it had.
  If it comes back it holds again: ``resolved_step`` is cleared and its first ``step`` is kept
  (the report shows when the problem was first seen). This is the rule for every check; the old
  ``RETRACTABLE`` attribute of a check module is ignored.
- **Evidence before "healthy".** With no warning or critical finding holding, the verdict is
  ``healthy`` only when :func:`evidence_for_health` finds a loss that fell beyond its noise or a
  metric that rose beyond its noise; otherwise ``inconclusive``.

Findings are ordered by :func:`order_findings` (cause before symptom, outcome before mechanism);
the first one that holds is the headline. A check that crashes is reported once on stderr and
skipped afterwards: the doctor fails open.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType

import numpy as np

from muvo_doctor.core.checks import ALL_CHECKS
from muvo_doctor.core.checks._common import finite, fmt, label_prior, median_se, progress, step_noise
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.finding import BASELINE_KEYS, SEVERITY_RANK, Finding, Report, Verdict, verdict_of
from muvo_doctor.core.history import History
from muvo_doctor.core.observation import Observation

# Outcome checks judge what the training achieves; the others judge a mechanism behind it.
OUTCOME_CHECKS = frozenset(
    {
        "nan_inf",
        "divergence",
        "flat_loss",
        "prior_baseline",
        "loss_not_decreasing",
        "metric_stuck",
        "loss_spike",
        "overfitting",
    }
)
# Causes and the symptoms they produce: with lr = 0, frozen parameters or a detached loss nothing moves,
# so the loss sits flat at the prior and the outputs stay constant. While a cause holds together with one
# of its symptoms, the cause is the headline (the verdict is dead either way when the symptom is critical).
CAUSES: dict[str, frozenset[str]] = {
    "frozen_parameters": frozenset(
        {"prior_baseline", "flat_loss", "constant_output", "loss_not_decreasing", "metric_stuck"}
    ),
}
_ORDER = {m.ID: i for i, m in enumerate(ALL_CHECKS)}

# Loss series that can show learning, and the metric names (last part of a signal name) where higher is better.
_LOSSES = ("train/loss", "val/loss", "test/loss")
_HIGHER_IS_BETTER = frozenset(
    {
        "acc",
        "accuracy",
        "top1",
        "top5",
        "auroc",
        "auc",
        "roc_auc",
        "auprc",
        "map",
        "map50",
        "ap",
        "f1",
        "precision",
        "recall",
        "iou",
        "miou",
        "dice",
        "bleu",
        "rouge",
        "r2",
        "psnr",
        "ssim",
    }
)
# Error metrics (last part of a name): like a loss, they show learning by falling. Regression and language
# logs often print only these (``train_mse``, ``val_ppl``) beside or instead of a loss. A classification
# error rate is not one of them: it falls to the minority rate when a model learns only the prior.
_LOWER_IS_BETTER = frozenset({"mse", "mae", "rmse", "l1", "l2", "nll", "ppl", "perplexity", "wer", "cer"})


def next_grid_step(step: int, config: DoctorConfig) -> int:
    """The grid step after ``step``: ``evaluate_every_steps`` apart, growing by whole multiples of it
    once ``evaluate_every_fraction`` of the steps seen is larger (a long run costs ~50 evaluations
    per doubling)."""
    every = config.evaluate_every_steps
    grow = int(step * config.evaluate_every_fraction) // every
    return step + every * max(grow, 1)


def order_findings(findings: Iterable[Finding]) -> list[Finding]:
    """The report's order: what holds before what is resolved; among what holds, warnings and criticals
    before info, a cause before the symptoms it produces (when both hold), worst severity, outcome
    before mechanism, then the check order of ``ALL_CHECKS``, then the first step."""
    fs = list(findings)
    holding = {f.check for f in fs if f.resolved_step is None and f.severity != "info"}

    def key(f: Finding) -> tuple[int, int, int, int, int, int, int]:
        resolved = f.resolved_step is not None
        cause = not resolved and bool(CAUSES.get(f.check, frozenset()) & holding)
        return (
            int(resolved),
            int(f.severity == "info"),
            0 if cause else 1,
            -SEVERITY_RANK[f.severity],  # the headline of a dead verdict is a critical finding
            0 if f.check in OUTCOME_CHECKS else 1,
            _ORDER.get(f.check, len(_ORDER)),
            f.step if f.step is not None else -1,
        )

    return sorted(fs, key=key)


def headline(findings: Iterable[Finding]) -> Finding | None:
    """The most causal warning or critical finding that holds (see :func:`order_findings`), or None."""
    for f in order_findings(findings):
        if f.resolved_step is None and f.severity != "info":
            return f
    return None


def confirm_window(dead_since: int, config: DoctorConfig) -> int:
    """Steps a dead verdict must hold, from the step it turned dead, before alerts and ``--stop-on dead``."""
    return max(config.confirm_dead_steps, math.ceil(config.confirm_dead_fraction * max(dead_since, 0)))


def confirmed_dead(verdict: str, since: int | None, step: int, config: DoctorConfig) -> tuple[bool, str]:
    """Whether a dead verdict has held for its confirmation window, and a sentence saying how long.

    A pure function of the verdict's history (Lightning's early-stopping style): the side effects
    (alerts, SIGINT) live with the caller.
    """
    if verdict != "dead" or since is None:
        return False, ""
    held = step - since
    window = confirm_window(since, config)
    if held < window:
        return False, f"dead for {held} steps (since step {since}); confirmed at {window}"
    return True, f"dead for {held} steps (since step {since})"


def _loss_evidence(
    history: History, config: DoctorConfig, name: str, baselines: Sequence[float] = (), priors: bool = True
) -> tuple[float, str] | None:
    """(strength, sentence) when the loss ``name`` fell beyond its noise and not just to the label prior.

    ``baselines``: other prior losses (those of prior_baseline findings that hold, e.g. a prior a log's
    accuracy plateau revealed); falling onto one of them is not evidence either. ``priors=False`` for an
    error metric (MSE, perplexity, ...), which no label prior's entropy bounds.
    """
    t = config.thresholds
    p = progress(history, t, name)
    got = finite(history, name)
    if p is None or got is None or not p.improved:
        return None
    v = got[1]
    k = max(len(v) // 3, 1)
    first, last = v[:k], v[-k:]
    se = math.hypot(median_se(first), median_se(last))
    if p.drop <= t.lnd_noise_z * se:
        return None
    # Falling onto the prior's loss is learning the label frequencies, not the task.
    prior = label_prior(history) if priors else None
    floors = [*((prior.entropy, prior.weighted) if prior is not None else ()), *(baselines if priors else ())]
    band_noise = t.pb_noise_z * median_se(last)
    for c in floors:
        if c is not None and c > 0 and abs(p.recent - c) <= t.pb_rel_band * c + band_noise:
            return None
    ratio = p.drop / se if se > 0 else math.inf
    noise = "far beyond its noise" if not math.isfinite(ratio) or ratio >= 1000 else f"{ratio:.0f}x its noise"
    span = p.last_step - p.first_step
    return ratio, f"{name} fell {fmt(p.start)} -> {fmt(p.recent)} over {span} steps, {noise}"


def _metric_evidence(history: History, config: DoctorConfig, name: str) -> tuple[float, str] | None:
    """(strength, sentence) when a higher-is-better metric rose beyond its noise (and above chance or the prior)."""
    t = config.thresholds
    got = finite(history, name)
    if got is None or len(got[1]) < 3:
        return None
    steps, v = got
    n = len(v)
    k = max(n // 3, 1)
    if name.startswith("train/") and k < 3:
        # A per-batch metric scatters: at least 3 points per third before its medians mean anything.
        return None
    start, recent = float(np.median(v[:k])), float(np.median(v[-k:]))
    scale = 100.0 if float(np.max(np.abs(v))) > 1.5 else 1.0  # printed as a percentage
    se = 1.2533 * step_noise(v) * math.sqrt(2.0 / k)
    rise = recent - start
    if rise <= max(t.lnd_noise_z * se, 0.01 * scale):
        return None
    metric = name.rsplit("/", 1)[-1]
    if metric in ("auroc", "auc", "roc_auc") and recent / scale <= 0.5 + 2 * t.ms_auroc_tol:
        return None  # still at chance
    if metric in ("acc", "accuracy", "top1"):
        prior = label_prior(history)
        # Rising to the majority rate is learning the prior, not the task; a batch accuracy at the prior
        # scatters around it by sqrt(p(1-p)/batch), so "above" means beyond the noise of the recent median.
        margin = max(t.pb_acc_tol, t.pb_noise_z * median_se(v[-k:] / scale))
        if prior is not None and recent / scale <= prior.majority + margin:
            return None
    ratio = rise / se if se > 0 else math.inf
    noise = "far beyond its noise" if not math.isfinite(ratio) or ratio >= 1000 else f"{ratio:.0f}x its noise"
    span = int(steps[-1] - steps[0])
    return ratio, f"{name} rose {fmt(start)} -> {fmt(recent)} over {span} steps, {noise}"


def evidence_for_health(
    history: History, config: DoctorConfig, baselines: Sequence[float] = ()
) -> str | None:
    """A sentence with the numbers that show learning, or None when nothing does (yet).

    Learning is a loss (``train/loss``, ``val/loss``, ``test/loss``) whose last third sits below its
    first third by more than 2% and more than ``lnd_noise_z`` standard errors (``checks._common.progress``)
    and not on the label prior's loss; or a higher-is-better metric (accuracy, AUROC, mAP, F1, ...)
    whose last third rose above its first by more than its noise and one point, above chance for
    AUROC and above the majority rate for accuracy when the labels are known. At most two are named:
    a loss first, then a metric (held-out splits before the training split). ``baselines``: prior
    losses that holding findings name (see ``_loss_evidence``).
    """
    found: list[str] = []
    for name in _LOSSES:
        got = _loss_evidence(history, config, name, baselines)
        if got is not None:
            found.append(got[1])
            break  # one loss is enough; a metric is the independent second witness
    # Held-out metrics first: they show learning that generalises; a training accuracy is the fallback.
    for name in sorted(history.names(), key=lambda n: (n.startswith("train/"), n)):
        if name.startswith("printed/") or "@rank" in name:
            continue
        metric = name.rsplit("/", 1)[-1]
        if metric in _HIGHER_IS_BETTER:
            got = _metric_evidence(history, config, name)
        elif metric in _LOWER_IS_BETTER:
            got = _loss_evidence(history, config, name, priors=metric == "nll")  # nats only for an NLL
        else:
            continue
        if got is not None:
            found.append(got[1])
            break
    return "; ".join(found) if found else None


class Doctor:
    """Feeds observations into a bounded history and runs the checks over it at a grid of steps.

    Feed it with :meth:`observe` (the grid is followed automatically: an observation past the next
    grid step first evaluates the history up to that step) and call :meth:`evaluate` once at the end.
    ``on_finding`` callbacks get each finding that is new, changed severity, resolved or holds again;
    ``on_evaluated`` callbacks get the Doctor after each evaluation (alerts, ``--stop-on``, the view).
    """

    def __init__(
        self,
        config: DoctorConfig | None = None,
        checks: Sequence[ModuleType] | None = None,
        source: str = "",
    ) -> None:
        self.config = config or DoctorConfig()
        self.checks = tuple(ALL_CHECKS if checks is None else checks)
        self.source = source
        self.history = History(self.config.history_points)
        self._findings: dict[str, Finding] = {}
        self._broken: set[str] = set()
        self._owner: dict[str, str] = {}  # finding's check id -> the module that returned it
        self._held: list[Observation] = []  # observations that may not count before a later grid step
        self._cut: int | None = None  # the grid step being evaluated (None: everything seen)
        self.next_grid = next_grid_step(0, self.config)
        self.step: int | None = None  # step of the latest evaluation
        self.evaluations = 0
        self._count_judged = -1  # history.count at the latest evaluation
        self.evidence: str | None = None
        self._verdict: Verdict = "inconclusive"
        self.verdict_since: int | None = None  # step of the evaluation where the current verdict began
        self.on_finding: list[Callable[[Finding], None]] = []
        self.on_evaluated: list[Callable[[Doctor, list[Finding]], None]] = []

    # -- input ---------------------------------------------------------------------------------
    def observe(self, obs: Observation, *, clock: bool = True) -> None:
        """Add one observation.

        Args:
            obs: the observation.
            clock: the observations arrive in step order, so one at step s says every step before s
                is complete: grid steps before s are evaluated first. ``False`` for a source that may
                run ahead of the others (printed lines of an instrumented run): it is held until the
                grid passes its step and never triggers an evaluation.
        """
        if clock:
            self.advance(obs.step - 1)
            self.history.add(obs)
        elif obs.step < self.next_grid:
            self.history.add(obs)
        else:
            self._held.append(obs)

    def observe_many(self, observations: Iterable[Observation]) -> None:
        """Add observations given in step order (a recorder flush)."""
        for obs in observations:
            self.observe(obs)

    def advance(self, step: int) -> None:
        """Every step up to ``step`` is complete: evaluate the grid steps up to it."""
        while step >= self.next_grid:
            g = self.next_grid
            self.next_grid = next_grid_step(g, self.config)
            if self.history.count == self._count_judged and not any(o.step <= g for o in self._held):
                # Nothing new since the last evaluation: the checks (pure functions of the history) would
                # say the same. A run that prints every 1,000 steps costs one evaluation per print, not 40.
                continue
            self._cut = g
            try:
                self.evaluate()
            finally:
                self._cut = None

    def replay(self) -> list[Finding]:
        """Judge a history that was filled directly (``history.add_point``, as the log readers do) the
        way a live run would have: the points in step order through the grid, then the end.

        The findings, first steps and resolutions are then those of ``run``/``watch`` on the same
        series. Cost: every point is added once more, plus one evaluation per grid step (~50 per doubling
        of the run's length). Per-point printed digits are not kept by the history: each series replays
        with the fewest decimals it was ever shown with. Returns what the final evaluation changed.
        """
        full = self.history
        names = full.names()
        parts = [(i, full.series(n)) for i, n in enumerate(names)]
        parts = [(i, s) for i, s in parts if s is not None]
        self.history = History(full.max_points)
        if parts:
            steps = np.concatenate([s.steps for _, s in parts])
            values = np.concatenate([s.values for _, s in parts])
            which = np.concatenate([np.full(len(s), i, dtype=np.int64) for i, s in parts])
            order = np.argsort(steps, kind="stable")  # within a step: series in name order, points in theirs
            digits = {i: s.digits for i, s in parts}
            add = self.history.add_point
            for st, v, i in zip(
                steps[order].tolist(), values[order].tolist(), which[order].tolist(), strict=True
            ):
                self.advance(st - 1)
                add(names[i], st, v, digits[i])
        return self.evaluate()

    def _admit(self, through: int | None) -> None:
        if not self._held:
            return
        keep: list[Observation] = []
        for obs in self._held:
            if through is None or obs.step <= through:
                self.history.add(obs)
            else:
                keep.append(obs)
        self._held = keep

    # -- judging -------------------------------------------------------------------------------
    def evaluate(self) -> list[Finding]:
        """Run every check over the history now; return the findings that changed.

        Called by :meth:`advance` at each grid step, and by the caller once at the end (then it
        first takes in everything held back). Changed: new, a different severity, resolved, or
        holding again.
        """
        self._admit(self._cut)
        # Off the grid means the end (a finished log, the last evaluation of a run): whole-log rules apply.
        self.history.complete = self._cut is None
        step = self._cut if self._cut is not None else max(self.history.last_step, 0)
        changed: list[Finding] = []
        for mod in self.checks:
            if mod.ID in self._broken:
                continue
            try:
                found: list[Finding] = mod.check(self.history, self.config)
            except Exception as exc:  # fail open: a doctor bug must not stop the training
                self._broken.add(mod.ID)
                print(f"muvo-doctor: check {mod.ID} failed and is disabled: {exc!r}", file=sys.stderr)
                continue
            now: dict[str, Finding] = {}
            for f in found:
                best = now.get(f.check)
                if best is None or SEVERITY_RANK[f.severity] > SEVERITY_RANK[best.severity]:
                    now[f.check] = f
            for f in now.values():
                self._owner[f.check] = mod.ID
                if self._hold(f):
                    changed.append(self._findings[f.check])
            for check, old in list(self._findings.items()):
                if self._owner.get(check) == mod.ID and check not in now and old.resolved_step is None:
                    self._findings[check] = old.model_copy(update={"resolved_step": step})
                    changed.append(self._findings[check])
        self.evidence = evidence_for_health(self.history, self.config, self._prior_losses())
        self._count_judged = self.history.count
        verdict = verdict_of(self._findings.values(), self.evidence)
        if verdict != self._verdict or self.verdict_since is None:
            self._verdict = verdict
            self.verdict_since = step
        self.step = step
        self.evaluations += 1
        for f in changed:
            for cb in self.on_finding:
                try:
                    cb(f)
                except Exception as exc:  # a broken alert sink must not stop the doctor
                    print(f"muvo-doctor: finding callback failed: {exc!r}", file=sys.stderr)
        for ev in self.on_evaluated:
            try:
                ev(self, changed)
            except Exception as exc:
                print(f"muvo-doctor: evaluation callback failed: {exc!r}", file=sys.stderr)
        return changed

    def _prior_losses(self) -> list[float]:
        """The prior losses named by findings that hold: a loss resting on one shows no learning."""
        out = []
        for f in self._findings.values():
            if f.resolved_step is None:
                for key in BASELINE_KEYS:
                    v = f.evidence.get(key)
                    if isinstance(v, (int, float)) and math.isfinite(v):
                        out.append(float(v))
        return out

    def _hold(self, f: Finding) -> bool:
        """Merge a finding the latest evaluation returned; True when it is new or changed."""
        old = self._findings.get(f.check)
        if old is None:
            self._findings[f.check] = f.model_copy(update={"resolved_step": None})
            return True
        step = old.step if old.step is not None else f.step
        self._findings[f.check] = f.model_copy(update={"step": step, "resolved_step": None})
        return old.resolved_step is not None or old.severity != f.severity

    # -- what the views read ---------------------------------------------------------------------
    @property
    def findings(self) -> list[Finding]:
        """Every finding so far, holding and resolved, in report order (:func:`order_findings`)."""
        return order_findings(self._findings.values())

    @property
    def holding(self) -> list[Finding]:
        """The findings that still hold, in report order."""
        return [f for f in self.findings if f.resolved_step is None]

    @property
    def headline(self) -> Finding | None:
        """The most causal warning or critical finding that holds."""
        return headline(self._findings.values())

    @property
    def verdict(self) -> Verdict:
        """The verdict the findings that hold and the latest evidence give (``inconclusive`` before any)."""
        return verdict_of(self._findings.values(), self.evidence)

    def report(self, source: str | None = None, steps: int | None = None) -> Report:
        """The report of docs/contract.md, as of the latest evaluation."""
        fs = self.findings
        return Report(
            source=self.source if source is None else source,
            verdict=verdict_of(fs, self.evidence),
            steps=max(self.history.last_step + 1, 0) if steps is None else steps,
            evidence_for_health=self.evidence,
            findings=fs,
        )
