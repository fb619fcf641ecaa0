"""The device buffer of sampled statistics and per-step losses, and the flush that turns it into observations."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from muvo_doctor.core.observation import Observation
from muvo_doctor.recorder.optimizer import _grad_values, _update_values

_BUFFER_START = 4096  # floats in the device buffer; doubles as needed up to _BUFFER_MAX
_LOSS_CHUNK = 256  # per-step loss references stacked into one device tensor at a time
_BUFFER_MAX = 1 << 22

_OBS_FIELDS = frozenset(("name", "step", "value", "digits", "rank"))


def _fast_obs(name: str, step: int, value: float, rank: int | None) -> Observation:
    """``Observation.model_construct`` without its per-call field walk (about 6 µs less per observation).

    The values are known to be valid (names built here, ints and floats); checked against
    ``model_construct`` once at import, else ``model_construct`` is used.
    """
    o = object.__new__(Observation)
    object.__setattr__(
        o, "__dict__", {"name": name, "step": step, "value": value, "digits": None, "rank": rank}
    )
    object.__setattr__(o, "__pydantic_fields_set__", _OBS_FIELDS)
    object.__setattr__(o, "__pydantic_extra__", None)
    object.__setattr__(o, "__pydantic_private__", None)
    return o


def _slow_obs(name: str, step: int, value: float, rank: int | None) -> Observation:
    return Observation.model_construct(name=name, step=step, value=value, digits=None, rank=rank)


try:
    _probe = _fast_obs("train/loss", 1, 0.5, None)
    _ok = _probe == _slow_obs("train/loss", 1, 0.5, None) and _probe.model_dump() == {
        "name": "train/loss", "step": 1, "value": 0.5, "digits": None, "rank": None
    }  # fmt: skip
except Exception:
    _ok = False
_make_obs = _fast_obs if _ok else _slow_obs


def _stack_losses(refs: list[torch.Tensor]) -> torch.Tensor:
    """One float32 vector of one-element losses (one kernel when they share a shape and dtype)."""
    try:
        return torch.stack(refs).reshape(-1).float()
    except RuntimeError:  # shapes () and (1,) mixed, or losses on two devices
        dev = refs[-1].device
        return torch.cat([r.reshape(1).float().to(dev) for r in refs])


@dataclass(slots=True)
class _Row:
    """Host-side layout of one appended block of the device buffer (or of host values)."""

    step: int | None
    names: tuple[str, ...]
    pos: int  # where the row starts in the device buffer; -1 for host values
    n: int
    # "plain", "binary" (positive fraction first), "classes" (counts), "loss", and per-parameter
    # norms the flush sums per module on the host: "grad" (_grad_values), "update" (_update_values).
    kind: str
    host: list[float] | None = None
    layout: Any = None  # what the host needs to turn a "grad" or "update" row into its names' values


class Buffer:
    """The Recorder's part that holds statistics until a flush, and delivers them to the doctor and the sink."""

    def _init_buffer(self) -> None:
        self._sink_failed = False
        # Device buffer and its host-side layout.
        self._buf: torch.Tensor | None = None
        self._pos = 0
        self._rows: list[_Row] = []
        self._unlabeled: list[_Row] = []
        # Host state carried across flushes.
        self._classes_seen: set[int] = set()
        self._binary_seen: set[int] = set()
        self._loss_refs: list[torch.Tensor] = []
        self._loss_chunks: list[torch.Tensor] = []
        self._loss_steps: list[int] = []
        self._loss_host: list[tuple[int, float]] = []

    def _append(
        self,
        step: int | None,
        names: tuple[str, ...],
        values: torch.Tensor,
        kind: str = "plain",
        layout: Any = None,
    ) -> None:
        """Append a 1-D block of statistics to the device buffer; no sync."""
        n = values.numel()
        if self._buf is None:
            self._buf = torch.empty(_BUFFER_START, dtype=torch.float32, device=values.device)
        if values.device != self._buf.device:
            if values.device.type == "cpu":  # host data: keep it on the host, no device copy
                self._add_row(_Row(step, names, -1, n, kind, values.tolist(), layout))
                return
            values = values.to(self._buf.device, non_blocking=True)
        if self._pos + n > self._buf.numel():
            if self._buf.numel() * 2 <= _BUFFER_MAX:
                bigger = torch.empty(self._buf.numel() * 2, dtype=torch.float32, device=self._buf.device)
                bigger[: self._pos].copy_(self._buf[: self._pos])
                self._buf = bigger
            else:
                self._flush()
        self._buf.narrow(0, self._pos, n).copy_(values.reshape(-1))
        self._add_row(_Row(step, names, self._pos, n, kind, None, layout))
        self._pos += n

    def _append_host(
        self, step: int | None, names: tuple[str, ...], values: list[float], kind: str = "plain"
    ) -> None:
        self._add_row(_Row(step, names, -1, len(values), kind, values))

    def _add_row(self, row: _Row) -> None:
        if row.step is None:
            if self.is_global:
                row.step = self.step
            else:
                self._unlabeled.append(row)
        self._rows.append(row)

    def _append_loss(self, step: int, loss: torch.Tensor | float) -> None:
        """The every-step path: keep a detached reference, launch nothing.

        Every ``_LOSS_CHUNK`` losses are stacked into one device tensor (one kernel), so the
        references held stay few; the flush concatenates the chunks with the other statistics.
        """
        if not isinstance(loss, torch.Tensor):
            self._loss_host.append((step, float(loss)))
            return
        # No graph held. ``.data`` rather than ``detach()``: the same storage, read only here, and ~1 us less
        # on every step (detach also shares the version counter, which only in-place writes need).
        lt = loss.data
        if lt.numel() != 1:
            lt = lt.float().mean()
        refs = self._loss_refs
        if len(refs) >= _LOSS_CHUNK:
            self._loss_chunks.append(_stack_losses(refs))
            refs.clear()
        refs.append(lt)
        self._loss_steps.append(step)

    def _flush(self) -> list[Observation]:
        self._flush_at = time.perf_counter() + self._flush_seconds
        self._sampled_since_flush = 0
        rows, loss_steps, loss_host = self._rows, self._loss_steps, self._loss_host
        if not rows and not loss_steps and not loss_host:
            return []
        self._rows, self._loss_steps, self._loss_host = [], [], []
        fallback = self._next_step if not self.is_global else self.step
        for row in self._unlabeled:
            row.step = fallback
        self._unlabeled.clear()
        values, losses = self._to_host(len(loss_steps))
        obs: list[Observation] = []
        nonfinite_loss = 0
        last_loss_step: int | None = None
        for step, v in sorted([*zip(loss_steps, losses, strict=True), *loss_host]):
            if not math.isfinite(v):
                nonfinite_loss += 1
            last_loss_step = step
            obs.append(_make_obs("train/loss", step, v, self.rank))
        self._row_observations(rows, values, fallback, obs)
        if last_loss_step is not None:
            obs.append(_make_obs("nonfinite/loss", last_loss_step, float(nonfinite_loss), self.rank))
        obs.sort(key=lambda o: o.step)
        self._deliver(obs)
        return obs

    def _to_host(self, n_loss: int) -> tuple[list[float], list[float]]:
        """The used part of the device buffer, then the pending losses: one host transfer for both."""
        values: list[float] = []
        losses: list[float] = []
        parts: list[torch.Tensor] = []
        if self._buf is not None and self._pos:
            parts.append(self._buf[: self._pos])
        parts += self._loss_chunks
        if self._loss_refs:
            parts.append(_stack_losses(self._loss_refs))
        self._loss_chunks, self._loss_refs = [], []
        if parts:
            dev = parts[0].device
            parts = [x if x.device == dev else x.to(dev) for x in parts]
            flat = (torch.cat(parts) if len(parts) > 1 else parts[0]).tolist()  # the one host sync
            values, losses = flat[: self._pos], flat[len(flat) - n_loss :]
        self._pos = 0
        return values, losses

    def _row_observations(
        self, rows: list[_Row], values: list[float], fallback: int, obs: list[Observation]
    ) -> None:
        """Append the observations of ``rows`` (their values in ``values`` or on the host) to ``obs``."""
        rank = self.rank

        def emit(name: str, step: int, value: float) -> None:
            obs.append(_make_obs(name, step, value, rank))

        for row in rows:
            vals = row.host if row.host is not None else values[row.pos : row.pos + row.n]
            if row.kind == "grad":
                vals = _grad_values(vals, row.layout)
            elif row.kind == "update":
                vals = _update_values(vals, row.layout)
            step = int(row.step if row.step is not None else fallback)
            if row.kind == "classes":
                counts = vals[: row.n - len(row.names)]
                extra = vals[row.n - len(row.names) :]
                total = sum(counts)
                for k, c in enumerate(counts):
                    if c > 0:
                        self._classes_seen.add(k)
                if total > 0:
                    for k in sorted(self._classes_seen):
                        emit(f"label/fraction/{k}", step, counts[k] / total if k < len(counts) else 0.0)
                emit("label/classes", step, float(len(self._classes_seen)))
                for name, v in zip(row.names, extra, strict=True):
                    emit(name, step, v)
            else:
                for name, v in zip(row.names, vals, strict=True):
                    if name.startswith("param/frozen/") and not v > 0:
                        continue  # per-module frozen fractions only when > 0
                    emit(name, step, v)
                if row.kind == "binary":
                    frac = vals[0]
                    if frac > 0:
                        self._binary_seen.add(1)
                    if frac < 1:
                        self._binary_seen.add(0)
                    emit("label/classes", step, float(len(self._binary_seen)))

    def _deliver(self, obs: list[Observation]) -> None:
        if self.doctor is not None:
            # The doctor evaluates at its grid of steps as these cross it (not once per flush: a flush
            # follows the wall clock too); close() adds the final evaluation.
            self.doctor.observe_many(obs)
        if self.sink is not None and not self._sink_failed:
            try:
                self.sink(obs)
            except Exception as exc:  # a broken sink must not stop the training, nor the doctor
                self._sink_failed = True
                print(f"muvo-doctor: observation sink failed and is disabled ({exc!r})", file=sys.stderr)
