"""muvo-train: train a camera + lidar anomaly detector, top to bottom in one loop.

    muvo-train                                   # defaults: fusion model, synthetic data, ~3 min on 2 CPU cores
    muvo-train --config run.toml --set train.steps=2000 --set model.arch=original
    muvo-train --describe                        # resolved config, data summary, parameter count; no training
    muvo-train --fault random-labels             # a named bug (see --list-faults), under the doctor
    torchrun --nproc_per_node 2 -m muvo_model.train   # DistributedDataParallel (gloo on CPU, NCCL on GPU)

The fast path keeps everything on the device: the data set is generated (or loaded) once as tensors, a
batch is an ``index_select`` on them, and nothing inside a step waits for the host. The host syncs only at
log and eval intervals (marked "host sync" below). Faults from faults.py enter only at "FAULT HOOK" lines.

The pieces the loop calls: train_setup.py (everything before the first step), step.py (loss and step),
evaluation.py, checkpoint.py, output.py (log lines, the training window, the in-process doctor).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from muvo_model.checkpoint import resume, save_checkpoint
from muvo_model.config import ConfigError, RunConfig, load_run_config
from muvo_model.data.frames import Frames
from muvo_model.evaluation import evaluate
from muvo_model.faults import FAULTS, Fault, get_fault
from muvo_model.model import build_model, count_parameters
from muvo_model.output import Log, Watch, Window, check_ranks_agree, fmt, print_table
from muvo_model.step import LossSpec, loss_spec, make_step, positive_fraction, train_steps
from muvo_model.train_setup import (
    BatchSampler,
    Dist,
    amp_dtype,
    build_training,
    leave_group,
    load_data,
    model_options,
    set_threads,
    setup_dist,
    wrap,
)

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
        check_ranks_agree(model, dist, log)
    result.wall_s = time.perf_counter() - t_start
    if dist.main:
        totals = {"train_prior": run.prior, "steps": float(end), "wall_s": result.wall_s}  # steps done
        result.metrics = {f"val_{k}": v for k, v in (last_eval or {}).items()} | window.metrics() | totals
        print_table(result.metrics, log)
    result.verdict = watch.finish(end, log, report)
    if dist.world > 1:
        del run  # with it the DDP wrapper, which must go before the process group: see leave_group
        leave_group(dist)
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
    set_threads(cfg, dist)
    device, amp = dist.device, amp_dtype(cfg, dist.device)
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
    net = wrap(model, dist, cfg.train.compile)
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
            f"  {name}: {len(d)} frames, {n_scen} scenarios, positive fraction {fmt(positive_fraction(d.frame_label))}, "
            f"image {tuple(d.image.shape[1:])}, points {d.points.shape[1]} "
            f"(mean valid {fmt(d.point_mask.float().sum(1).mean().item())}), "
            f"anomaly points {fmt(positive_fraction(d.point_label[d.point_mask]))}"
        )
    model = build_model(cfg.model.arch, **model_options(cfg))
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


# make_step, train_steps and LossSpec are documented here (docs/training.md) for benchmarks and notebooks.
__all__ = ["LossSpec", "TrainResult", "main", "make_step", "train", "train_steps"]

if __name__ == "__main__":
    sys.exit(main())
