"""What a run shows as it trains: log lines, the training window, the in-process doctor, the final table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from muvo_model.config import RunConfig
from muvo_model.train_setup import Dist


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


def check_ranks_agree(model: nn.Module, dist: Dist, log: Log) -> None:
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
