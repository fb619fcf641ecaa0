"""In-process recorder (placeholder API; the full hook-based recorder replaces this body).

Public API, stable:
    rec = Recorder(model, optimizer, doctor=doctor)      # or: with watch(model, optimizer) as rec:
    rec.record(step, loss=loss, outputs=logits, labels=y)  # every step; no host sync here
    rec.flush()                                            # bring stats to the host, feed the doctor
    rec.close()
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from muvo_doctor.config import DoctorConfig
from muvo_doctor.doctor import Doctor
from muvo_doctor.observation import Observation

Sink = Callable[[list[Observation]], None]


class Recorder:
    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        doctor: Doctor | None = None,
        config: DoctorConfig | None = None,
        sink: Sink | None = None,
        rank: int | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.config = config or (doctor.config if doctor else DoctorConfig())
        self.doctor = doctor if doctor is not None else Doctor(self.config)
        self.sink = sink
        self.rank = rank
        self._pending: list[tuple[int, torch.Tensor]] = []

    def record(
        self,
        step: int,
        *,
        loss: torch.Tensor | float,
        outputs: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        t = loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
        self._pending.append((step, t))
        if len(self._pending) >= self.config.flush_every:
            self.flush()

    def flush(self) -> list[Observation]:
        if not self._pending:
            return []
        values = torch.stack([t.float() for _, t in self._pending]).tolist()  # one host sync
        obs = [
            Observation(name="train/loss", step=s, value=v, rank=self.rank)
            for (s, _), v in zip(self._pending, values, strict=True)
        ]
        self._pending.clear()
        self.doctor.observe_many(obs)
        self.doctor.evaluate()
        if self.sink is not None:
            self.sink(obs)
        return obs

    def close(self) -> None:
        self.flush()


@contextmanager
def watch(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, **kwargs: Any) -> Iterator[Recorder]:
    """Record a training loop under the doctor; flushes on exit."""
    rec = Recorder(model, optimizer, **kwargs)
    try:
        yield rec
    finally:
        rec.close()
