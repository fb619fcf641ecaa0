"""In-process recorder: a PyTorch training loop in, observations out, one host sync per flush.

Public API, stable:
    rec = Recorder(model, optimizer, doctor=doctor)      # or: with watch(model, optimizer) as rec:
    rec.record(step, loss=loss, outputs=logits, labels=y)  # every step; no host sync here
    rec.flush()                                            # bring stats to the host, feed the doctor
    rec.close()
    rec = Recorder.install_global(sink=..., rank=...)      # no model: global hooks (the `run` wrapper)
    rec.observe_loss_call("cross_entropy", input, target, output)

How it stays cheap:
- Official hooks only: ``optimizer.register_step_pre_hook`` / ``register_step_post_hook`` (or their
  global versions), forward hooks on loss modules (found by a global forward hook in the first steps).
- Between samples the hooks only count: the optimizer pre-hook and the loss-module hooks are registered
  from the step before a sampled step until it is recorded; the post-hook adds one to a counter (global
  mode: and keeps a reference to the step's loss, the ``backward()`` tensor; there the loss-module hooks
  stay on every step when ``backward()`` runs on anything but the main loss call's output itself).
- The loss costs no kernel per step: a reference to it (detached) is kept, and every 256 of them are
  stacked into one device tensor.
- Everything else (gradient norms, update ratios, parameter states, outputs, labels) runs on sampled
  steps only, every ``sample_every`` optimizer steps or as the adaptive schedule decides, with
  ``torch._foreach_norm`` over all tensors at once. Per-module sums of per-parameter norms are host
  arithmetic at the flush; the pre-step snapshot for update ratios lives in buffers allocated once.
- Every statistic is a device tensor appended to one flat device buffer (a ``copy_`` into a
  ``narrow`` view); the host keeps the layout. A flush does one ``tolist()`` of the used part.
- Nothing in a hook reads a device value on the host (no ``.item()``, ``bool(tensor)``,
  ``nonzero()``); data-dependent decisions (probabilities or logits, classes present) are made
  with ``torch.where`` on the device or on the host after the flush.
- Any exception inside the recorder is reported once on stderr and disables it (fail open).
"""

from __future__ import annotations

import atexit
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.optim.optimizer as _optim_hooks
from torch.utils.hooks import RemovableHandle

from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.doctor import Doctor
from muvo_doctor.core.observation import Observation
from muvo_doctor.recorder.buffer import Buffer
from muvo_doctor.recorder.losses import LossCalls
from muvo_doctor.recorder.modules import Discovery
from muvo_doctor.recorder.optimizer import DEFAULT_SNAPSHOT_ELEMS, OptimizerStats
from muvo_doctor.recorder.schedule import DEFAULT_OVERHEAD_BUDGET, DEFAULT_SAMPLE_EVERY, Schedule
from muvo_doctor.recorder.stats import batch_stats

Sink = Callable[[list[Observation]], None]


# One object whose parts (one module each) share its state: the per-step hooks reach that state as
# plain attributes, with no call through a component on the path that runs every step.
class Recorder(LossCalls, Discovery, OptimizerStats, Buffer, Schedule):
    """Turns a training loop into observations for a :class:`~muvo_doctor.core.doctor.Doctor` and/or a sink.

    Args:
        model: the model being trained; ``None`` only for the global recorder.
        optimizer: its optimizer; gradient norms, update ratios and parameter states need it.
        doctor: the doctor fed at each flush; a new one is made when neither a doctor nor a sink
            is given (explicit mode always has one, as ``rec.doctor``).
        config: sampling and flushing (``sample_every``, ``flush_every``, ``flush_seconds``).
        sink: called at each flush with the new observations (the ``run`` wrapper streams them).
        rank: process rank under torchrun, stamped on every observation.
        sample_every: overrides ``config.sample_every``; when neither sets it explicitly,
            heavy statistics run every ``DEFAULT_SAMPLE_EVERY`` optimizer steps.
        snapshot_elems: at most this many parameter elements are copied before a sampled step
            to measure update ratios (larger tensors contribute their first elements).
        overhead_budget: with the default schedule, the fraction of step time the sampled
            statistics may take on the host (measured, not assumed).
    """

    def __init__(
        self,
        model: torch.nn.Module | None,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        doctor: Doctor | None = None,
        config: DoctorConfig | None = None,
        sink: Sink | None = None,
        rank: int | None = None,
        sample_every: int | None = None,
        snapshot_elems: int = DEFAULT_SNAPSHOT_ELEMS,
        overhead_budget: float = DEFAULT_OVERHEAD_BUDGET,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.config = config or (doctor.config if doctor is not None else DoctorConfig())
        if doctor is None and (model is not None or sink is None):
            doctor = Doctor(self.config)
        self.doctor = doctor
        self.sink = sink
        self.rank = rank
        # An explicit sample_every (keyword or config) is a fixed schedule; otherwise the interval
        # starts at DEFAULT_SAMPLE_EVERY and grows so the sampled work stays within overhead_budget.
        self.adaptive = sample_every is None and "sample_every" not in self.config.model_fields_set
        if sample_every is None:
            sample_every = DEFAULT_SAMPLE_EVERY if self.adaptive else self.config.sample_every
        if not 0 < overhead_budget < 1:
            raise ValueError(f"overhead_budget must be in (0, 1), got {overhead_budget}")
        self.overhead_budget = float(overhead_budget)
        if sample_every < 1:
            raise ValueError(f"sample_every must be >= 1, got {sample_every}")
        if snapshot_elems < 1:
            raise ValueError(f"snapshot_elems must be >= 1, got {snapshot_elems}")
        self.sample_every = int(sample_every)
        self.flush_every = max(1, int(self.config.flush_every))
        self.snapshot_elems = int(snapshot_elems)
        self.is_global = False

        self._handles: list[RemovableHandle] = []
        self._disabled = False
        self._closed = False
        self._init_schedule()
        self._init_buffer()
        self._init_optimizer_stats()
        self._init_discovery(model)
        self._init_loss_calls()
        if optimizer is not None:
            st = self._attach(optimizer)
            self._arm_pre_hook(optimizer.register_step_pre_hook)
            self._arm_post_hook(optimizer.register_step_post_hook, self._counter(st))

    # ------------------------------------------------------------------ public API

    @classmethod
    def install_global(
        cls,
        *,
        config: DoctorConfig | None = None,
        sink: Sink | None = None,
        rank: int | None = None,
        doctor: Doctor | None = None,
        sample_every: int | None = None,
        discovery_steps: int = 3,
    ) -> Recorder:
        """Record every optimizer and loss module in this process, with no model at hand.

        Uses the global optimizer step hooks to find optimizers and their parameters, and global
        module forward hooks for ``discovery_steps`` optimizer steps to name parameters (through
        the modules that ran) and to find loss modules. After that the global forward hooks are
        replaced by hooks on the modules found (global hooks slow every module call), unless
        the program makes a new loss module every step.

        Returns:
            The recorder; ``close()`` removes every hook and flushes.
        """
        rec = cls(None, None, config=config, sink=sink, rank=rank, doctor=doctor, sample_every=sample_every)
        rec.is_global = True
        rec._discovery_steps = max(1, int(discovery_steps))
        rec._arm_pre_hook(_optim_hooks.register_optimizer_step_pre_hook)
        rec._handles.append(
            _optim_hooks.register_optimizer_step_post_hook(rec._guard(rec._on_post_step_global))
        )
        rec._install_discovery()
        atexit.register(rec.close)
        return rec

    @property
    def step(self) -> int:
        """The step the next observations will carry (optimizer steps in global mode)."""
        if self._primary is not None and self.is_global:
            return self._primary.count
        return self._next_step

    @property
    def enabled(self) -> bool:
        """False once closed or disabled by an internal error."""
        return not (self._disabled or self._closed)

    def record(
        self,
        step: int,
        *,
        loss: torch.Tensor | float,
        outputs: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        """Record one training step; call it after ``optimizer.step()``. No host sync.

        Args:
            step: the optimizer step (labels every observation of this step).
            loss: the training loss (a tensor on any device, or a float).
            outputs: model outputs of the batch, e.g. logits (N,) binary or (N, K) multiclass.
            labels: the batch's labels: float/bool (binary) or class indices (multiclass).
        """
        if self._disabled or self._closed:
            return
        t0 = self._sample_clock()
        try:
            self._record(step, loss, outputs, labels)
        except Exception as exc:
            self._fail(exc)
        if t0:
            self._cost += time.perf_counter() - t0

    def observe_loss_call(
        self, kind: str, input: torch.Tensor, target: torch.Tensor | None, output: torch.Tensor
    ) -> None:
        """See one call of a loss function (global mode; the bootstrap's wrapped functional losses).

        Args:
            kind: ``bce_with_logits``, ``cross_entropy``, ``bce``, ``nll``, ``mse`` or another name.
            input: the loss input (logits, probabilities or log-probabilities).
            target: the loss target, if any.
            output: the loss value the call returned.
        """
        if not self.enabled:
            return
        t0 = self._sample_clock()
        try:
            self._observe_loss(kind, input, target, output)
        except Exception as exc:
            self._fail(exc)
        if t0:
            self._cost += time.perf_counter() - t0

    def observe_backward(self, loss: torch.Tensor) -> None:
        """See the tensor ``backward()`` was called on (global mode; the bootstrap's patched backward).

        It is ``train/loss`` for steps without a loss-function call (a loss written as a formula).
        A loss call wins when there is one: under AMP the backward tensor is the loss times the
        gradient scale.
        """
        if self._disabled or self._closed or not isinstance(loss, torch.Tensor):
            return
        try:
            n = loss.numel()
            if n == 0:
                return
            # Detached when the step closes: the reference ends with the step.
            self._step_backward = loss if n == 1 else loss.detach().float().mean()
            if self._step_formula or loss is self._last_loss_out:  # backward() on the loss call's output
                return
            if self._plain_node is not None and not self._main_set:  # loss-module hooks off: no call seen
                if type(loss.grad_fn) is not self._plain_node:
                    self._backward_unhooked()  # scaled or combined: the loss call's own value is unknown
            elif not self._from_loss_call(loss.grad_fn):
                self._step_formula = True
        except Exception as exc:
            self._fail(exc)

    def flush(self) -> list[Observation]:
        """Bring every pending statistic to the host (one sync), feed the doctor and the sink.

        Returns:
            The observations of this flush.
        """
        if self._disabled:
            return []
        try:
            return self._flush()
        except Exception as exc:
            self._fail(exc)
            return []

    def close(self) -> None:
        """Flush and remove every hook. Safe to call twice."""
        if self._closed:
            return
        if not self._disabled:
            try:
                if self.is_global:
                    self._close_global_step()
            except Exception as exc:
                self._fail(exc)
            self.flush()
            if self.doctor is not None:
                try:
                    self.doctor.evaluate()  # the final evaluation: the steps after the last grid step
                except Exception as exc:
                    self._fail(exc)
        self._closed = True
        self._remove_hooks()
        if self.is_global:
            atexit.unregister(self.close)

    # ------------------------------------------------------------------ failure handling

    def _guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def hook(*args: Any, **kwargs: Any) -> None:
            if self._disabled or self._closed:
                return None
            # _sample_clock() written out: this runs on every step, where a call is ~5% of the hook's time.
            t0 = time.perf_counter() if self._armed or self._probe_handle is not None else 0.0
            try:
                fn(*args, **kwargs)
            except Exception as exc:
                self._fail(exc)
            if t0:
                self._cost += time.perf_counter() - t0
            return None  # hooks never change the training's arguments or outputs

        return hook

    def _sample_clock(self) -> float:
        """A start time while the steps around a sample run (else 0.0): what the sampling budget pays.

        From the step before a sampled step (hooks armed) to the stale-gradient probe in the backward after
        it, every entry into the recorder counts in full: its hooks, statistics, registrations and probe.
        Timing only the statistics left ~10% of that out, and the schedule overran its budget by 20-27%.
        """
        return time.perf_counter() if self._armed or self._probe_handle is not None else 0.0

    def _fail(self, exc: BaseException) -> None:
        if self._disabled:
            return
        self._disabled = True
        self._remove_hooks()
        try:
            print(
                f"muvo-doctor: recorder failed and is disabled ({exc!r}); training continues unmonitored",
                file=sys.stderr,
            )
        except Exception:
            pass

    def _remove_hooks(self) -> None:
        self._disarm_probe()
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._discovery_handles = []
        self._loss_handles = []
        self._pre_handle = None
        self._post_handle = None

    # ------------------------------------------------------------------ explicit mode

    def _record(
        self, step: int, loss: torch.Tensor | float, outputs: torch.Tensor | None, labels: torch.Tensor | None
    ) -> None:
        if self._unlabeled:
            for row in self._unlabeled:  # hook rows of this step (gradients, updates, stale check)
                row.step = step
            self._unlabeled.clear()
        if self._main_set or self._last_loss_out is not None:
            self._close_loss_calls(step)  # loss-module inputs seen by the forward hooks (sampled steps)
        if self._discovery_due:
            self._start_loss_discovery()
        self._append_loss(step, loss)
        if self._primary is not None:
            counter = self._sampled_count  # set by the optimizer pre-hook when it sampled this step
        else:
            counter = self._records if self._records >= self._next_sample else None
        self._records += 1
        if counter is not None:
            for names, values, kind in batch_stats(outputs, labels, kind=None).values():
                self._append(step, names, values, kind)
        self._next_step = step + 1
        if self._discovery_handles and self._discovery_counter() >= self._discovery_steps:
            self._end_discovery()
        self._end_step(counter)
        nxt = self._primary.count if self._primary is not None else self._records
        if (nxt + 1 >= self._next_sample) != self._armed:
            self._sync_step_hooks()


@contextmanager
def watch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    **kwargs: Any,
) -> Iterator[Recorder]:
    """Record a training loop under the doctor; flushes and removes the hooks on exit.

    Example:
        with muvo_doctor.watch(model, optimizer) as rec:
            for step, (x, y) in enumerate(loader):
                ...
                rec.record(step, loss=loss, outputs=logits, labels=y)
        print(rec.doctor.report().to_json())
    """
    rec = Recorder(model, optimizer, **kwargs)
    try:
        yield rec
    finally:
        rec.close()


__all__: Sequence[str] = ("Recorder", "Sink", "watch")
