"""Every threshold the doctor uses, in one pydantic config, overridable from a TOML file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message is one line naming the fix."""


class Thresholds(BaseModel):
    """Check thresholds. Each field's comment says which check reads it and why the default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Every check reads only this object. "points" are history points (one per sampled step).
    # -- shared
    min_points: int = 20  # fewer points of a signal than this and a trend check stays silent (warm-up)
    min_sampled_points: int = 5  # warm-up for sampled statistics (gradients, outputs: the recorder
    # computes them every 10th step by default, so 20 points would be 200 steps)
    window: int = 50  # "recent" window (points) for levels of gradients, outputs, params: one default flush
    # -- nan_inf
    nan_critical_fraction: float = 0.5  # share of recent non-finite loss/grad points that makes it critical
    # (an occasional inf gradient skipped by an fp16 GradScaler is normal, so isolated ones only warn)
    # -- flat_loss
    flat_window: int = 50  # points the loss must stay flat over; noisy minibatch losses never stay this still
    flat_rel_range: float = 1e-4  # (max-min)/|median| below this is flat; minibatch noise is ~1e-2 and more
    flat_abs_zero: float = 1e-12  # |loss| below this is exactly zero (an unused auxiliary loss), never flat
    flat_min_printed_units: int = 100  # a printed constant counts as flat only if it spans >= this many
    # units of its last digit (0.6931 is 6931 units; 0.0012 is 12 units: a display issue, not a flat line)
    flat_min_repeats: int = 5  # logs: this many last records repeating one value exactly is flat (a learning
    # loss never repeats itself to 4 significant digits 5 times in a row)
    flat_min_repeats_precise: int = 3  # ... or this many when the value shows >= 5 significant digits
    flat_short_min_points: int = 8  # logs shorter than flat_window: from this many records ...
    flat_short_rel: float = 0.005  # ... all within 0.5% of their median is flat (minibatch noise is >= 1-2%)
    # -- loss_not_decreasing
    lnd_min_points: int = 100  # long window: fewer loss points and we cannot tell a trend from noise
    lnd_min_rel_drop: float = 0.02  # a learning loss drops at least 2% from its start (median vs median)
    lnd_noise_z: float = 3.0  # ... and by more than 3 standard errors of the median difference
    # -- divergence
    div_block: int = 5  # points per block median (robust to single spikes, which are loss_spike's)
    div_factor: float = 3.0  # blocked loss above best + 3x max(|best|, start-best): far above anything seen
    div_patience: int = 2  # consecutive blocks that must hold (a spike that comes back is not divergence)
    div_abs: float = 1e6  # logs: a loss this large in each of its last records that does not fall ...
    div_abs_points: int = 3  # ... over this many records has blown up
    div_worse: float = 1.2  # training and held-out loss both end 1.2x above their first records: unlearned
    div_heldout_factor: float = 10.0  # a held-out loss 10x its best in the last 2 evaluations blew up
    div_rises: int = 4  # the training loss up at each of its last 4 records (epochs) ...
    div_rise_rel: float = 0.02  # ... by 2% of its level in all
    div_short_points: int = 60  # the rising rule reads logs of at most this many records (epoch averages)
    div_rebound: float = 1.5  # a held-out loss 1.5x its best ...
    div_rebound_evals: int = 3  # ... in each of the last 3 evaluations, with a training loss not falling
    # -- loss_spike
    spike_z: float = 12.0  # robust z of a step-to-step jump; heavy-tailed minibatch noise reaches ~6-8
    spike_min_rel: float = 0.5  # the jump must also be at least 50% of the loss level
    spike_return_points: int = 5  # ... and the loss must come back within this many points (isolated)
    spike_setback: float = 1.0  # a spike warns only if the 10 points after it sit >= 100% above the 10
    # before (it undid progress); spikes that vanish at once (a hard batch, pos_weight) are info
    spike_setback_of_jump: float = 0.15  # ... and by >= 15% of the jump (healthy pos_weight runs: <= 8%)
    spike_short_factor: float = 2.0  # logs shorter than min_points: a jump to 2x the previous record ...
    spike_short_setback: float = 0.25  # ... and no later record back within 25% of the level before it
    # -- vanishing_gradients (AUTOTRAINER defaults: beta1=1e-3 ratio, beta2=1e-4 absolute)
    vg_ratio: float = 1e-3  # a module whose gradient norm is below 1e-3 x the largest module's is quiet
    vg_abs: float = 1e-4  # ... and below this absolute norm
    vg_total_abs: float = 1e-8  # total gradient norm below this: nothing moves (SageMaker: 1e-7 mean |g|)
    vg_quiet_fraction: float = 0.5  # quiet share of modules that warns; one quiet layer alone is only info
    vg_quiet_count: int = 3  # ... or this many quiet modules (a deep saturating stack, not one odd layer)
    vg_log_min_records: int = 3  # logs: a printed total grad norm at zero in this many records (and all)
    # -- exploding_gradients
    eg_growth: float = 100.0  # recent gradient norm 100x its early level (healthy runs grow <10x)
    eg_abs: float = 1e4  # or an absolute total norm this large (BCE/CE models sit at 1e-2..1e1)
    eg_scale_collapse: float = 1024.0  # fp16 loss scale 2^10 below its top: overflow at every step
    # -- frozen_parameters
    frozen_min_fraction: float = 0.05  # share of trainable elements frozen/no-grad/... that warns
    frozen_all_fraction: float = 0.99  # share treated as "everything is frozen"
    frozen_repeat_fraction: float = 0.8  # logs: share of losses equal to the one an epoch earlier
    frozen_repeat_min_distinct: int = 10  # ... among at least this many distinct values (not quantisation)
    frozen_min_observed: int = 2  # sampled steps needed before frozen_parameters judges (run's adaptive
    # sampling records only 2-5 steps of a fast 200-step run); the first steps (Lightning's closure, lr warm-up
    # from 0) are excluded by the check itself, and critical needs the loss flat over lnd_min_points
    # -- stale_gradients
    stale_fraction: float = 0.5  # grad/stale mean over the window above this: zero_grad is missing
    stale_growth_ratio: float = 5.0  # grad norm grew this much ...
    stale_growth_corr: float = 0.95  # ... nearly linearly with step (Pearson r) while the loss stalls
    # -- constant_output
    co_abs_std: float = 1e-6  # output std across the batch below this: the input is ignored
    co_rel_std: float = 1e-4  # or below this fraction of |output mean|
    co_saturated: float = 0.95  # share of saturated outputs (|logit| > 6) that counts as saturated
    # -- wrong_loss_input
    wli_min_points: int = 10  # with-logits input inside [0, 1] for this many points: probabilities
    wli_logprob_tol: float = 1e-6  # NLL input max above this: not log-probabilities
    # -- display_precision
    dp_min_points: int = 5  # printed/real pairs (or log records) needed before judging
    dp_mismatch_fraction: float = 0.8  # share of prints showing zero at their resolution, real value not
    dp_max_distinct: int = 3  # logs: at most this many distinct printed values over many records ...
    dp_min_records: int = 50  # ... of at least this many records
    # -- label_imbalance
    li_min_batches: int = 10  # labelled batches before judging: 10 single-class batches by chance is
    # rare (0.9^16 per batch of 16 at p = 0.1 -> 1e-7 for ten in a row)
    li_min_fraction: float = 0.02  # mean positive fraction below this (or above 1 - this) warns: 1 in 50
    # -- prior_baseline
    pb_window: int = 100  # points the loss must sit at the prior (one sampled step each). Not shorter:
    # with half the points seen (at least 50), bench/detection.py called a healthy 10%-prior run (rare10
    # seed 1, AUROC 0.53 at the time) dead at the pos_weight prior before it learned (final AUROC 0.91)
    pb_window_heldout: int = 60  # ... with 3+ held-out AUROC evaluations at chance (a second witness). In
    # bench/detection.py (an evaluation every 50 steps) windows of 50-100 gave the same first steps for
    # random labels (3 seeds) and for that one healthy transient: the third evaluation decides there
    pb_rel_band: float = 0.03  # |loss - prior loss| within 3% of the prior loss (plus noise) ...
    pb_noise_z: float = 3.0  # ... or within this many standard errors of the window median
    pb_acc_tol: float = 0.01  # accuracy within 1 point of the majority rate
    pb_acc_near: float = 0.05  # the message says accuracy ≈ majority rate only within 5 points of it
    pb_auroc_tol: float = 0.05  # AUROC within 0.05 of 0.5
    pb_log_min_points: int = 3  # logs: loss records (epochs, evaluations) before an inferred prior is judged
    pb_window_for_noise: int = 10  # logs: fewer loss records give no noise estimate (relative band only)
    pb_ln_k_max: int = 1000  # unused: K comes from the log (accuracy at 1/K), never from a plateau near ln K;
    pb_ln_k_rel_band: float = 0.005  # unused, like pb_ln_k_max: both kept so existing config files still load
    # -- overfitting
    of_patience: int = 5  # validation points in a row above the best one
    of_min_rise: float = 0.05  # ... by at least 5% of the best validation loss
    of_metric_tol: float = 0.01  # val AUROC/acc/mAP within this of its best: the rise is calibration, info
    of_few_rises: int = 2  # logs: val loss up at each of the last 2 evaluations ...
    of_few_min_rise: float = 0.1  # ... to 10% above its best while the training loss fell
    of_few_evals: int = 3  # logs: a held-out score below its best in each of the last 3 evaluations ...
    of_metric_drop: float = 0.03  # ... by 3 points while training improves (not AUPRC 0.50 -> 0.47 at chance)
    # -- metric_stuck
    ms_min_evals: int = 5  # evaluations needed before judging a metric
    ms_auroc_tol: float = 0.05  # AUROC within 0.05 of 0.5 on every recent evaluation (and never above
    # 0.5 + 2x this): chance. A random scorer on a few hundred held-out frames lands within +-0.05 of 0.5
    ms_map_floor: float = 0.01  # mAP below this on every recent evaluation: nothing detected
    ms_acc_tol: float = 0.005  # accuracy within half a point of 1/K or of the majority rate
    ms_one_class_rel: float = 0.2  # a one-class guess scores that class's share: MNIST's 10 hold 8.9-11.4%
    ms_zero_evals: int = 2  # logs: a held-out score exactly 0 in this many evaluations recognised nothing
    ms_train_rel_drop: float = 0.1  # ... critical unless a training loss fell 10% (early mAP rounds to 0)


class DoctorConfig(BaseModel):
    """How the doctor samples, flushes and judges."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Recorder: statistics cross from the device to the host once per flush, never per step.
    sample_every: int = 1  # compute in-process statistics every N optimizer steps
    flush_every: int = 50  # ... and bring them to the host every N sampled steps
    flush_seconds: float = 5.0  # ... or after this many seconds, whichever comes first
    history_points: int = 20_000  # per-signal bound on the history
    # Doctor: the checks run at a grid of recorded steps, never on a wall clock, so the same series gives
    # the same findings and first steps live, in `watch` and at the end. The grid step is
    # evaluate_every_steps until evaluate_every_fraction of the steps seen exceeds it, then grows in
    # multiples of it (25 up to step 2,500, 50 up to 5,000, ...): ~50 evaluations per doubling of a long run.
    evaluate_every_steps: int = Field(default=25, ge=1)  # 25: median detection latency 76 (bench)
    evaluate_every_fraction: float = Field(default=0.02, ge=0.0, le=1.0)  # long runs: the grid grows
    # Alerts and --stop-on dead act on a dead verdict only once it has held (uninterrupted) for
    # max(confirm_dead_steps, confirm_dead_fraction x the step it turned dead at) steps: long enough that a
    # run sitting at the prior (ln 2) for its first ~400 steps and then learning is never stopped (measured:
    # a printed-only loss stuck at exactly 0.6931 is dead from step 25 and clears ~100 steps after it starts
    # to fall, so a 500-step window left 25 steps of margin for a 400-step plateau; 600 leaves 125).
    confirm_dead_steps: int = Field(default=600, ge=0)  # the least a dead verdict must hold (steps)
    confirm_dead_fraction: float = Field(default=0.5, ge=0.0)  # ... or this share of its start step
    thresholds: Thresholds = Thresholds()


def read_toml(path: str | Path) -> dict[str, Any]:
    """The tables of a TOML config file, for any of our commands' ``--config``.

    Raises:
        ConfigError: the file is missing, unreadable or not TOML (one line naming the fix).
    """
    p = Path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{p}: no such config file; pass an existing TOML file to --config or drop it"
        ) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p}: not a readable TOML file ({exc}); fix the syntax or drop --config") from None


def validation_line(err: ValidationError, where: str, root: type[BaseModel]) -> str:
    """The first problem pydantic found in a config, as one line: an unknown key lists the valid keys of its
    table (the commonest mistake is a typo), a bad value says what was expected."""
    errors = err.errors()
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] != "extra_forbidden":
        return f"{where}: bad value for '{loc}': {e['msg']}"
    section = root
    for part in e["loc"][:-1]:
        field = section.model_fields.get(str(part))
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            break
        section = field.annotation
    valid = ", ".join(sorted(section.model_fields))
    return f"{where}: unknown key '{loc}'; valid keys here are: {valid}"


def load_config(path: str | Path | None = None) -> DoctorConfig:
    """Read a DoctorConfig from a TOML file (top-level keys and a ``[thresholds]`` table).

    Raises:
        ConfigError: the file is missing, not TOML, or has an unknown key or a bad value.
    """
    if path is None:
        return DoctorConfig()
    data = read_toml(path)
    try:
        return DoctorConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_line(err, str(Path(path)), DoctorConfig)) from None
