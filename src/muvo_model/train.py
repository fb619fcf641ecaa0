"""muvo-train: train a camera + lidar anomaly detector, top to bottom in one loop.

    muvo-train                                   # defaults: fusion model, synthetic data, ~3 min on 2 CPU cores
    muvo-train --config run.toml --set train.steps=2000 --set model.arch=original
    muvo-train --describe                        # resolved config, data summary, parameter count; no training
    muvo-train --fault random-labels             # a named bug (see --list-faults), under the doctor
    torchrun --nproc_per_node 2 -m muvo_model.train   # DistributedDataParallel (gloo on CPU, NCCL on GPU)

The fast path keeps everything on the device: the data set is generated (or loaded) once as tensors, a
batch is an ``index_select`` on them, and nothing inside a step waits for the host. The host syncs only at
log and eval intervals (marked "host sync" below). Faults from faults.py enter only at "FAULT HOOK" lines.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import pickle
import re
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from muvo_model.config import ConfigError, RunConfig, load_run_config
from muvo_model.data.frames import Frames
from muvo_model.faults import FAULTS, Fault, get_fault
from muvo_model.model import build_model, count_parameters

# -----------------------------------------------------------------------------------------------------------
# Devices and processes


@dataclass(frozen=True)
class Dist:
    """Where this process sits: rank, world size, device; rank 0 logs, evaluates and saves."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool = False  # this process started the process group, so it ends it after training

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_dist(device: str) -> Dist:
    """Pick the device; under torchrun (RANK/WORLD_SIZE set) also join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    owns = world > 1 and not torch.distributed.is_initialized()
    if owns:
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, dev, owns)


# -----------------------------------------------------------------------------------------------------------
# Data: once, as device tensors


def _synthetic(cfg: RunConfig, n: int, seed: int, offset: int, device: torch.device) -> Frames:
    from muvo_model.data import synthetic

    scfg = synthetic.SyntheticConfig(
        image_size=(cfg.data.image_size, cfg.data.image_size),
        num_points=cfg.data.points,
        anomaly_fraction=cfg.data.anomaly_fraction,
        contrast=cfg.data.contrast,
        anomaly_modality=cfg.data.anomaly_modality,
    )
    return synthetic.generate(n, seed=seed, config=scfg, device=str(device), scenario_offset=offset)


def load_data(cfg: RunConfig, device: torch.device) -> tuple[Frames, Frames]:
    """The training and held-out splits as Frames on ``device`` (held-out = other scenarios).

    Raises:
        ConfigError: the data source cannot be used (e.g. AnoVox without a root).
    """
    if cfg.data.source == "anovox":
        if not cfg.data.root:
            raise ConfigError("data.source='anovox' needs data.root; pass --set data.root=PATH")
        from muvo_model.data import anovox

        try:
            data = anovox.load_anovox(
                cfg.data.root,
                num_points=cfg.data.points,
                image_size=cfg.data.image_size,
                seed=cfg.data.seed,
            )
        except anovox.AnovoxError as exc:  # one line naming the folder and the fix
            raise ConfigError(str(exc)) from None
        print(data.report.summary(), flush=True)
        train, val = data.train.to(device), data.val.to(device)
    else:
        train = _synthetic(cfg, cfg.data.train_frames, cfg.data.seed, 0, device)
        val = _synthetic(cfg, cfg.data.val_frames, cfg.data.seed + 1, 1_000_000, device)
    if device.type == "cuda":  # the layout the convolutions run fastest in
        train.image = train.image.contiguous(memory_format=torch.channels_last)
        val.image = val.image.contiguous(memory_format=torch.channels_last)
    return train, val


class BatchSampler:
    """Epochs of random permutations of [0, n); each step takes the next ``batch`` indices (device tensor).

    Every rank draws the same global batch and keeps its slice, so DDP ranks see disjoint shards.
    """

    def __init__(
        self, n: int, batch: int, seed: int, device: torch.device, rank: int = 0, world: int = 1
    ) -> None:
        if batch % world:
            raise ConfigError(f"train.batch_size={batch} must be divisible by the {world} DDP processes")
        self.n, self.batch, self.device, self.rank, self.world = n, min(batch, n), device, rank, world
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.gen).to(device)
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen).to(self.device)  # once per epoch
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return idx.view(self.world, -1)[self.rank]  # this rank's shard of the global batch

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "perm": self.perm.cpu(), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.perm = state["perm"].to(self.device)
        self.pos = int(state["pos"])


# -----------------------------------------------------------------------------------------------------------
# The step: forward, loss, backward, clip, update. No host sync inside.


def lr_lambda(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


@dataclass
class LossSpec:
    """What the loss needs besides the batch: prior weights and the point-loss weight."""

    pos_weight: torch.Tensor | None  # frame BCE: (1-p)/p from the training prior
    point_pos_weight: torch.Tensor | None  # point BCE: the same for anomaly points
    point_weight: float  # 0 disables the point loss
    # DDP only: every output enters the loss, those without a term with weight 0 (see _zero_anchor).
    anchor_outputs: bool = False

    def __post_init__(self) -> None:
        # A loss module, not the functional form: the doctor's loss-input hook sees module calls in-process.
        self.criterion = nn.BCEWithLogitsLoss(pos_weight=self.pos_weight)


def compute_loss(
    out: dict[str, torch.Tensor | None], labels: torch.Tensor, batch: Frames, spec: LossSpec, fault: Fault
) -> torch.Tensor:
    """Frame BCE-with-logits (+ masked per-point BCE for the fusion model), in fp32."""

    bce = spec.criterion
    frame_logit = out["frame_logit"]
    assert frame_logit is not None
    loss = fault.frame_loss(frame_logit.float(), labels, bce)  # FAULT HOOK: the frame loss
    point_logit = out.get("point_logit")
    if point_logit is not None and spec.point_weight > 0 and fault.point_loss:  # FAULT HOOK: point loss off
        per_point = F.binary_cross_entropy_with_logits(
            point_logit.float(), batch.point_label, pos_weight=spec.point_pos_weight, reduction="none"
        )  # (N, P)
        # Padded points contribute nothing, to the sum or the count (a device tensor: no sync).
        masked = torch.where(batch.point_mask, per_point, torch.zeros_like(per_point)).sum()
        loss = loss + spec.point_weight * masked / batch.point_mask.sum().clamp_min(1)
    if spec.anchor_outputs:
        loss = loss + _zero_anchor(out)
    return loss


def _zero_anchor(out: dict[str, torch.Tensor | None]) -> torch.Tensor:
    """0 x every output: a zero in value and gradient that still reaches every parameter.

    DDP (without find_unused_parameters, which costs a graph walk per step) needs a gradient for every
    parameter at every step; a fault that drops the point loss or detaches the logits leaves heads
    without one ("parameters that were not used in producing loss"). nan_to_num keeps an Inf output
    from turning the zero into NaN; its gradient is 0 there.
    """
    return sum(o.float().nan_to_num().sum() for o in out.values() if o is not None) * 0.0


def make_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    spec: LossSpec,
    *,
    amp_dtype: torch.dtype | None = None,
    grad_clip: float = 1.0,
    fault: Fault | None = None,
) -> Callable[[Frames, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """One optimizer step as a function ``step(batch, labels) -> (loss, frame_logits)``, both on the device.

    This is the step the training loop and the throughput benchmark run. It never syncs with the host:
    the returned tensors are read only when the caller chooses to.
    """
    fault = fault or Fault()
    device_type = next(model.parameters()).device.type
    autocast = (
        torch.autocast(device_type=device_type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    )

    def step(batch: Frames, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if fault.zero_grad:  # FAULT HOOK: a missing zero_grad
            optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = model(batch.image, batch.points, batch.point_mask)
        loss = compute_loss(out, labels, batch, spec, fault)
        loss.backward()
        if grad_clip > 0:
            # Returns a device tensor; no error_if_nonfinite, which would sync.
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        frame_logit = out["frame_logit"]
        assert frame_logit is not None
        return loss.detach(), frame_logit.detach().float()

    return step


def train_steps(
    step: Callable[[Frames, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    data: Frames,
    n_steps: int,
    batch_size: int,
    *,
    seed: int = 0,
    on_step: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run ``n_steps`` steps on random batches of ``data`` (device tensors); returns the last loss (no sync).

    For benchmarks: ``on_step(i, loss, logits, labels)`` is where a Recorder's ``record`` goes.
    """
    sampler = BatchSampler(len(data), batch_size, seed, data.image.device)
    loss = torch.zeros((), device=data.image.device)
    for i in range(n_steps):
        idx = sampler.next()
        batch = data.index(idx)
        loss, logits = step(batch, batch.frame_label)
        if on_step is not None:
            on_step(i, loss, logits, batch.frame_label)
    return loss


# -----------------------------------------------------------------------------------------------------------
# Evaluation on the held-out split (host sync: once per call)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Frames,
    *,
    pos_weight: torch.Tensor | None,
    batch_size: int,
    amp_dtype: torch.dtype | None,
    max_points: int = 2_000_000,
) -> dict[str, float]:
    """Frame-level loss, accuracy, AUROC, AUPRC, FPR95 and point-level AUROC against the true labels."""
    from muvo_model import metrics

    was_training = model.training
    model.eval()
    frame, point = [], []
    device_type = data.image.device.type
    autocast = torch.autocast(device_type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    for i in range(0, len(data), batch_size):
        b = data.index(slice(i, i + batch_size))
        with autocast:
            out = model(b.image, b.points, b.point_mask)
        frame.append(out["frame_logit"].float())
        if out.get("point_logit") is not None:
            point.append(out["point_logit"].float())
    model.train(was_training)
    logits = torch.cat(frame)
    y = data.frame_label
    res = {
        "loss": F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight).item(),
        "acc": ((logits > 0) == (y > 0.5)).float().mean().item(),
    }
    s, t = logits.cpu().numpy(), y.cpu().numpy()  # host sync
    try:
        res |= {
            "auroc": metrics.auroc(s, t),
            "auprc": metrics.auprc(s, t),
            "fpr95": metrics.fpr_at_95_tpr(s, t),
        }
    except ValueError:  # a single-class split: ranking metrics are undefined
        res |= {"auroc": float("nan"), "auprc": float("nan"), "fpr95": float("nan")}
    if point:
        pl = torch.cat(point)[data.point_mask]
        py = data.point_label[data.point_mask]
        if pl.numel() > max_points:  # cost: numpy sorts; a fixed random subset keeps eval cheap on big sets
            keep = torch.randperm(pl.numel(), generator=torch.Generator().manual_seed(0))[:max_points]
            pl, py = pl[keep.to(pl.device)], py[keep.to(py.device)]
        try:
            res["point_auroc"] = metrics.auroc(pl.cpu().numpy(), py.cpu().numpy())
        except ValueError:
            res["point_auroc"] = float("nan")
    return res


# -----------------------------------------------------------------------------------------------------------
# Output: rich on a TTY, plain lines otherwise


class Log:
    """Log lines (plain, greppable ``key=value`` with 6 significant digits) and, on a TTY, a progress bar."""

    def __init__(self, enabled: bool, total: int, start: int) -> None:
        from rich.console import Console

        self.enabled = enabled
        self.console = Console(highlight=False)
        self.progress = None
        if enabled and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.description}"), console=self.console, transient=True,
            )  # fmt: skip
            self.task = self.progress.add_task("", total=total, completed=start)
            self.progress.start()

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.console.print(text, markup=False)
        else:
            print(text, flush=True)

    def advance(self, step: int, desc: str | None = None) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, **({"description": desc} if desc else {}))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def fmt(v: float) -> str:
    return f"{v:.6g}"


# -----------------------------------------------------------------------------------------------------------
# The run


@dataclass
class TrainResult:
    """What a run produced: final metrics, every step's loss (rank 0), the doctor's verdict."""

    metrics: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)  # loss of each optimizer step, in order (from step 0)
    verdict: str | None = None
    wall_s: float = 0.0
    interrupted: bool = False


class _StopFlag:
    """While active, SIGINT sets ``.set`` instead of raising, so the loop stops between steps."""

    def __init__(self) -> None:
        self.set = False
        self._old: Any = None

    def __enter__(self) -> _StopFlag:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.set:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc: object) -> None:
        import signal

        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _amp_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype | None:
    if cfg.train.amp == "bf16" or (cfg.train.amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _prior(x: torch.Tensor) -> float:
    return float(x.float().mean().item()) if x.numel() else 0.0


def _pos_weight(p: float, device: torch.device, cap: float) -> torch.Tensor:
    # A single-class split has no prior to balance (the doctor's label_imbalance says so): weight 1.
    w = (1 - p) / p if 0.0 < p < 1.0 else 1.0
    return torch.tensor(min(w, cap), device=device)


def _digits(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text and "e" not in text else 0


def train(
    cfg: RunConfig,
    *,
    fault: Fault | None = None,
    report: str | None = None,
    argv: str = "",
    stop_at: int | None = None,
) -> TrainResult:
    """Train (and evaluate) one run as configured; the body of ``muvo-train``.

    Args:
        cfg: the resolved run config.
        fault: a fault from faults.py to inject (None: a correct run).
        report: write the doctor's JSON report here.
        argv: the command line, recorded as the report's source.
        stop_at: end this session after this optimizer step (the schedule still spans ``train.steps``)
            and write a checkpoint; for time-boxed jobs that resume later.
    """
    fault = fault or Fault()
    t_start = time.perf_counter()
    run = prepare(cfg, fault, argv)  # process group, data, loss, model, optimizer, resume, DDP, doctor
    dist, model, sampler, train_set, watch = run.dist, run.model, run.sampler, run.train_set, run.watch
    result = TrainResult(losses=run.losses)
    log = Log(dist.main, cfg.train.steps, run.start)
    if fault.name != "none":
        log.line(f"fault {fault.name}: {fault.bug}")
    window = Window(dist.device)
    last_eval: dict[str, float] | None = None
    end = cfg.train.steps if stop_at is None else min(stop_at, cfg.train.steps)
    # Ctrl-C (or `muvo-doctor run --stop-on dead`) ends the run at the next step boundary, with a checkpoint.
    with _StopFlag() as interrupted:
        for step in range(run.start, end):
            idx = sampler.next()
            batch = train_set.index(idx)  # index_select on device tensors: the whole "data loader"
            labels = fault.labels(batch)  # FAULT HOOK: the labels of this batch
            loss, logits = run.step_fn(batch, labels)  # forward, backward, update: no host sync
            watch.record(step, loss, logits, labels)
            window.add(loss, logits, labels)
            done = step + 1
            if interrupted.set:
                end = done
            if done % cfg.train.log_every == 0 or done == end:
                losses = window.flush()  # host sync: once per log interval
                result.losses += losses
                # FAULT HOOK: how the loss is printed
                printed = fault.format_loss(losses[-1], len(train_set), train_set.points.shape[1])
                lr = run.scheduler.get_last_lr()[0]
                rate = len(losses) * cfg.train.batch_size / window.seconds()
                log.line(
                    f"step {done} loss={printed} acc={fmt(window.acc)} lr={fmt(lr)} samples/s={rate:.0f}"
                )
                watch.observe("printed/loss", step, float(printed), _digits(printed))
                log.advance(done, f"loss {printed}")
            if dist.main and (done % cfg.train.eval_every == 0 or done == end):
                last_eval = run.evaluate()  # host sync: once per evaluation
                log.line(f"eval step {done} " + " ".join(f"val_{k}={fmt(v)}" for k, v in last_eval.items()))
                watch.observe_eval(step, last_eval)
                window.restart_clock()  # the evaluation's time is not training throughput
            every = cfg.train.checkpoint_every
            if dist.main and run.ckpt_path and (done == end or (every and done % every == 0)):
                run.save_checkpoint(done, result.losses)
            if done == end:
                break
    log.close()
    if interrupted.set:
        log.line(f"interrupted at step {end}" + (f"; checkpoint in {run.ckpt_path}" if run.ckpt_path else ""))
        result.interrupted = True

    if dist.world > 1:
        _check_ranks_agree(model, dist, log)
    result.wall_s = time.perf_counter() - t_start
    if dist.main:
        totals = {"train_prior": run.prior, "steps": float(end), "wall_s": result.wall_s}  # steps done
        result.metrics = {f"val_{k}": v for k, v in (last_eval or {}).items()} | window.metrics() | totals
        print_table(result.metrics, log)
    result.verdict = watch.finish(end, log, report)
    if dist.world > 1:
        del run  # with it the DDP wrapper, which must go before the process group: see _leave_group
        _leave_group(dist)
    return result


@dataclass
class Run:
    """The pieces of one run, as prepare() builds them (each from those before it)."""

    cfg: RunConfig
    dist: Dist
    train_set: Frames
    prior: float  # positive fraction of the training labels
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: BatchSampler
    ckpt_path: Path | None
    start: int  # the first step: 0, or where the resumed checkpoint left off
    losses: list[float]  # of the steps before ``start``
    step_fn: Callable[[Frames, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # holds the DDP wrapper
    evaluate: Callable[[], dict[str, float]]  # on the held-out split
    watch: Watch

    def save_checkpoint(self, step: int, losses: list[float]) -> None:
        assert self.ckpt_path is not None
        save_checkpoint(
            self.ckpt_path, self.model, self.optimizer, self.scheduler, self.sampler, step, losses, self.cfg
        )


def prepare(cfg: RunConfig, fault: Fault, argv: str) -> Run:
    """Everything before the first step, in order: process group and device, data (once, on the device),
    loss weights, model and optimizer, resume, DDP / compile, the doctor."""
    dist = setup_dist(cfg.train.device)
    _set_threads(cfg, dist)
    device, amp = dist.device, _amp_dtype(cfg, dist.device)
    train_set, val_set = load_data(cfg, device)
    spec, prior = loss_spec(cfg, train_set, fault, dist)
    model, optimizer, scheduler = build_training(cfg, fault, device)
    sampler = BatchSampler(
        len(train_set), cfg.train.batch_size, cfg.train.seed, device, dist.rank, dist.world
    )
    ckpt_path = Path(cfg.train.checkpoint_dir) / "checkpoint.pt" if cfg.train.checkpoint_dir else None
    start, losses = 0, []
    if cfg.train.resume and ckpt_path is not None and ckpt_path.exists():
        start, losses = resume(ckpt_path, model, optimizer, scheduler, sampler, device)
    net = _wrap(model, dist, cfg.train.compile)
    step_fn = make_step(
        net, optimizer, scheduler, spec, amp_dtype=amp, grad_clip=cfg.optim.grad_clip, fault=fault
    )
    evaluate_val = partial(
        evaluate,
        model,
        val_set,
        pos_weight=spec.pos_weight,
        batch_size=cfg.train.eval_batch_size,
        amp_dtype=amp,
    )
    watch = Watch.attach(cfg, dist, model, optimizer, argv)  # rank 0 only; a no-op when disabled
    model.train()
    return Run(
        cfg, dist, train_set, prior, model, optimizer, scheduler, sampler, ckpt_path, start, losses, step_fn,
        evaluate_val, watch,
    )  # fmt: skip


def _set_threads(cfg: RunConfig, dist: Dist) -> None:
    """train.threads, or under CPU DDP the cores shared out between this machine's ranks."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    elif dist.world > 1 and dist.device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))


def loss_spec(cfg: RunConfig, train_set: Frames, fault: Fault, dist: Dist) -> tuple[LossSpec, float]:
    """The loss's prior weights from the training split; also the training prior itself."""
    device = dist.device
    prior = _prior(fault.labels(train_set))  # FAULT HOOK: the labelling function (prior only)
    point_prior = _prior(train_set.point_label[train_set.point_mask])
    spec = LossSpec(
        pos_weight=_pos_weight(prior, device, 100.0) if fault.use_pos_weight else None,  # FAULT HOOK
        point_pos_weight=_pos_weight(point_prior, device, 50.0),
        point_weight=cfg.train.point_loss_weight,
        # The healthy configuration uses every parameter, so only a fault or a disabled point loss pays.
        anchor_outputs=dist.world > 1 and (fault.name != "none" or cfg.train.point_loss_weight == 0),
    )
    return spec, prior


def _model_options(cfg: RunConfig) -> dict[str, Any]:
    mk = cfg.model
    if mk.arch == "original":
        return {}
    return {"width": mk.width, "heads": mk.heads, "tokens": mk.tokens, "dropout": mk.dropout}


def build_training(
    cfg: RunConfig, fault: Fault, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The model (seeded by train.seed), AdamW over what the optimizer should update, warmup + cosine."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model.arch, **_model_options(cfg))
    model = fault.model(model)  # FAULT HOOK: the model
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    params = list(fault.optimizer_params(model))  # FAULT HOOK: what the optimizer updates
    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.optim.lr * fault.lr_scale,  # FAULT HOOK: the learning rate
        betas=(cfg.optim.beta1, cfg.optim.beta2),
        weight_decay=cfg.optim.weight_decay,
        fused=device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.optim.warmup_steps, cfg.train.steps, cfg.optim.min_lr_ratio)
    )
    return model, optimizer, scheduler


def resume(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sampler: BatchSampler,
    device: torch.device,
) -> tuple[int, list[float]]:
    """Restore model, optimizer, scheduler, sampler and RNG, so the continued run is the same run;
    returns the step to continue from and the losses so far."""
    ck = load_checkpoint(path, device)
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    sampler.load_state_dict(ck["sampler"])
    torch.set_rng_state(ck["rng"])
    if device.type == "cuda" and ck.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(ck["cuda_rng"], device)
    return int(ck["step"]), list(ck.get("losses", []))


def _wrap(model: nn.Module, dist: Dist, use_compile: bool) -> nn.Module:
    """DistributedDataParallel under torchrun, then torch.compile when asked; the model itself otherwise."""
    net: nn.Module = model
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None
        )
    if use_compile:
        net = torch.compile(net)  # type: ignore[assignment]
    return net


def _leave_group(dist: Dist) -> None:
    """Wait for every rank; end the process group if this process started it.

    The DistributedDataParallel wrapper must be gone (the caller drops it; collect its cycles here)
    before its group is: a gloo group torn down under a live DDP reducer aborts the process at exit
    ("terminate called without an active exception") about one run in three on a loaded machine
    (torch 2.13, measured).
    """
    gc.collect()
    torch.distributed.barrier()
    if dist.owns_group:  # a caller that started the group trains again in it or ends it itself
        torch.distributed.destroy_process_group()


class Window:
    """Training losses and accuracy since the last log line, kept on the device (no sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.losses: list[torch.Tensor] = []
        self.correct = torch.zeros((), device=device)
        self.positives = torch.zeros((), device=device)
        self.seen = 0
        self.loss = self.acc = self.majority = float("nan")  # of the last flushed window
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.losses.append(loss)
        self.correct += ((logits > 0) == (labels > 0.5)).sum()
        self.positives += labels.sum()
        self.seen += labels.numel()

    def flush(self) -> list[float]:
        """The window's losses as floats (host sync); sets loss, acc and majority; starts a new window."""
        losses = torch.stack(self.losses).tolist()
        self.loss = sum(losses) / len(losses)
        self.acc, pos = self.correct.item() / self.seen, self.positives.item() / self.seen
        self.majority = max(pos, 1 - pos)
        self.losses, self.seen = [], 0
        self.correct.zero_()
        self.positives.zero_()
        return losses

    def seconds(self) -> float:
        """Wall time since the clock last started; restarts it."""
        now = time.perf_counter()
        dt, self.t0 = now - self.t0, now
        return dt

    def restart_clock(self) -> None:
        self.t0 = time.perf_counter()

    def metrics(self) -> dict[str, float]:
        return {"train_loss": self.loss, "train_acc": self.acc, "train_majority": self.majority}


class Watch:
    """The in-process doctor on rank 0: a Recorder that keeps statistics on the device (one sync per
    flush) feeding a Doctor. Every method is a no-op when the doctor is off or on other ranks."""

    def __init__(self, doctor: Any = None, recorder: Any = None) -> None:
        self.doctor, self.recorder = doctor, recorder

    @classmethod
    def attach(
        cls, cfg: RunConfig, dist: Dist, model: nn.Module, optimizer: torch.optim.Optimizer, argv: str
    ) -> Watch:
        if not (cfg.doctor.enabled and dist.main):
            return cls()
        from muvo_doctor.core.config import load_config
        from muvo_doctor.core.doctor import Doctor
        from muvo_doctor.recorder import Recorder

        dcfg = load_config(cfg.doctor.config)
        doctor = Doctor(dcfg, source=argv or "muvo-train")
        rank = dist.rank if dist.world > 1 else None
        return cls(doctor, Recorder(model, optimizer, doctor=doctor, config=dcfg, rank=rank))

    def record(self, step: int, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if self.recorder is not None:
            self.recorder.record(step, loss=loss, outputs=logits, labels=labels)

    def observe(self, name: str, step: int, value: float, digits: int | None = None) -> None:
        if self.doctor is not None:
            from muvo_doctor.core.observation import Observation

            # Not a step clock: the recorder's flushes (buffered, time-based) carry the training steps, and
            # a printed or evaluation value observed ahead of them must not trigger the Doctor's grid
            # evaluation early, or the first step a check reports would depend on flush timing.
            # (train/acc comes from the Recorder, per sampled batch; a windowed mean fed here as well
            # would interleave a second, smoother series under the same name.)
            self.doctor.observe(Observation(name=name, step=step, value=value, digits=digits), clock=False)

    def observe_eval(self, step: int, metrics: dict[str, float]) -> None:
        for k in ("loss", "acc", "auroc", "auprc", "fpr95"):
            self.observe(f"val/{k}", step, metrics[k])

    def finish(self, steps: int, log: Log, report: str | None) -> str | None:
        """Close the recorder, judge, print the verdict and findings, write the report; the verdict."""
        if self.recorder is None or self.doctor is None:
            return None
        self.recorder.close()
        self.doctor.evaluate()
        rep = self.doctor.report(steps=steps)
        n = len(rep.findings)
        log.line(f"doctor: verdict {rep.verdict} ({n} finding{'s' * (n != 1)})")
        for f in rep.findings:
            log.line(f"  {f.severity} {f.check} (step {f.step}): {f.message}")
        if report:
            Path(report).write_text(rep.to_json() + "\n", encoding="utf-8")
        return rep.verdict


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sampler: BatchSampler,
    step: int,
    losses: list[float],
    cfg: RunConfig,
) -> None:
    """Everything a resumed run needs to continue identically, as tensors and plain values only (so
    load_checkpoint can refuse any other pickled object); written atomically (tmp + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "sampler": sampler.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "step": step,
        "losses": losses,
        "config": cfg.model_dump(mode="json"),  # plain values: loadable with weights_only=True
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """A checkpoint written by save_checkpoint: tensors and plain values only (``weights_only=True``).

    Raises:
        ConfigError: the file holds other pickled objects (unpickling them could run any code) or is
            not a checkpoint at all; one line naming the file and the fix.
    """
    fix = "delete it, or point train.checkpoint_dir at a folder of muvo-train checkpoints"
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        what = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        obj = f" ({what.group(1)})" if what else ""
        raise ConfigError(
            f"{path}: refused to resume: the checkpoint holds a pickled object{obj}, not only tensors and "
            f"plain values, and loading it could run code; {fix}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0]}); {fix}") from None
    if not isinstance(ck, dict) or not _CHECKPOINT_KEYS <= ck.keys():
        raise ConfigError(f"{path}: not a muvo-train checkpoint (missing {sorted(_CHECKPOINT_KEYS)}); {fix}")
    return ck


_CHECKPOINT_KEYS = frozenset({"model", "optimizer", "scheduler", "sampler", "rng", "step"})


def _check_ranks_agree(model: nn.Module, dist: Dist, log: Log) -> None:
    """DDP averages gradients, so every rank must end with the same weights; say so (or not) on rank 0."""
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.world)]
    torch.distributed.all_gather(gathered, flat)
    diff = max(float((g - flat).abs().max()) for g in gathered)
    log.line(f"ddp: {dist.world} ranks, max parameter difference across ranks {diff:.3g}")


def print_table(metrics: dict[str, float], log: Log) -> None:
    """The final metrics as a table (rich box on a TTY, plain aligned text otherwise)."""
    if not log.enabled:
        return
    if log.console.is_terminal:
        from rich.table import Table

        table = Table(title="final metrics")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in metrics.items():
            table.add_row(k, fmt(v))
        log.console.print(table)
        return
    print("final metrics")
    for k, v in metrics.items():
        print(f"  {k:<16} {fmt(v):>12}")


# -----------------------------------------------------------------------------------------------------------
# Command line


def describe(cfg: RunConfig) -> None:
    """Resolved config, data summary and parameter count (``--describe``)."""
    import json

    print("config")
    for section, values in cfg.model_dump().items():
        print(f"  [{section}] " + " ".join(f"{k}={json.dumps(v)}" for k, v in values.items()))
    device = torch.device("cpu") if cfg.train.device == "auto" else torch.device(cfg.train.device)
    train_set, val_set = load_data(cfg, device)
    print("data")
    for name, d in (("train", train_set), ("val", val_set)):
        n_scen = int(torch.unique(d.scenario).numel())
        print(
            f"  {name}: {len(d)} frames, {n_scen} scenarios, positive fraction {fmt(_prior(d.frame_label))}, "
            f"image {tuple(d.image.shape[1:])}, points {d.points.shape[1]} "
            f"(mean valid {fmt(d.point_mask.float().sum(1).mean().item())}), "
            f"anomaly points {fmt(_prior(d.point_label[d.point_mask]))}"
        )
    model = build_model(cfg.model.arch, **_model_options(cfg))
    print(f"model\n  arch {cfg.model.arch}: {count_parameters(model):,} parameters")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="muvo-train", description="Train the muvo_model anomaly detector.")
    p.add_argument(
        "--config", metavar="TOML", help="a run config file (sections data, model, optim, train, doctor)"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set train.steps=800")  # fmt: skip
    p.add_argument("--describe", action="store_true", help="print the resolved config, data and model; exit")
    p.add_argument("--arch", choices=["fusion", "original"], help="shortcut for --set model.arch=...")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-doctor", action="store_true", help="train without the in-process doctor")
    p.add_argument("--report", metavar="PATH", help="write the doctor's JSON report here")
    p.add_argument("--fault", metavar="NAME", help="inject a named bug (see --list-faults)")
    p.add_argument("--list-faults", action="store_true", help="list the injectable faults and exit")
    return p


class _UsageError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``muvo-train``. Exit codes: 0 ok, 2 bad usage or config (one line on stderr)."""
    parser = _parser()

    def usage_error(message: str) -> None:  # argparse would print usage + exit; we want one line, code 2
        raise _UsageError(message)

    parser.error = usage_error  # type: ignore[method-assign,assignment]
    try:
        args = parser.parse_args(argv)
        if args.list_faults:
            print("\n\n".join(f().describe() for f in FAULTS.values()))
            return 0
        overrides = list(args.overrides)
        if args.arch:
            overrides.append(f"model.arch={args.arch}")
        if args.compile:
            overrides.append("train.compile=true")
        if args.no_doctor:
            overrides.append("doctor.enabled=false")
        cfg = load_run_config(args.config, overrides)
        try:
            fault = get_fault(args.fault)
        except ValueError as exc:
            raise ConfigError(f"--fault: {exc}") from None
        if args.describe:
            describe(cfg)
            return 0
        res = train(
            cfg, fault=fault, report=args.report, argv=" ".join(["muvo-train", *(argv or sys.argv[1:])])
        )
        if res.interrupted:
            return 130
    except _UsageError as exc:
        print(f"muvo-train: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"muvo-train: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
