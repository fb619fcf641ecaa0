"""When to measure: the sampling schedule within the overhead budget, the flush trigger, and the step hooks
that are on only around sampled steps."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from torch.utils.hooks import RemovableHandle

# Heavy statistics every N optimizer steps unless the config sets sample_every explicitly:
# measured overhead (bench/overhead.py) stays under 1% of a step at this rate.
DEFAULT_SAMPLE_EVERY = 10
# Sampled work at most 0.3% of the step time (adaptive schedule). Was 0.5% when a sample cost ~1.6x more
# (module sums on the device, a fresh snapshot each time): about the same sampling gap, less overhead.
DEFAULT_OVERHEAD_BUDGET = 0.003
MAX_SAMPLE_GAP = 200  # ... but a sample at least every 200 steps


class Schedule:
    """The Recorder's part that decides which steps are sampled and when to flush."""

    def _init_schedule(self) -> None:
        self._sampled_since_flush = 0
        self._flush_seconds = float(self.config.flush_seconds)
        self._flush_at = time.perf_counter() + self._flush_seconds  # flush by this clock time at the latest
        # Step bookkeeping.
        self._records = 0
        self._next_sample = 0  # counter value (optimizer steps, or records without optimizer) to sample next
        self._sampled_count: int | None = None  # counter of the sampled step in progress
        self._cost = 0.0  # host seconds spent around samples since the last sample (_sample_clock), flushes
        self._n_samples = 0
        # The training's own seconds per step: the wall time of the steps between the last two samples, less
        # the recorder's time in it, over their count. Set once per sample: the steps between pay one clock read.
        self._step_time: float | None = None
        self._last_tick = time.perf_counter()  # the last sampled step's end: the gap timed from here ...
        self._gap_steps = 0  # ... over this many unsampled steps ...
        self._gap_end = self._last_tick  # ... the last of which ended here ...
        self._gap_cost = 0.0  # ... with this much of _cost spent by then
        self._next_step = 0
        self._pre_handle: RemovableHandle | None = None  # explicit mode: the optimizer pre-hook while armed
        self._armed = True  # step hooks on (the first step is sampled)
        self._register_pre: Callable[[Callable[..., Any]], RemovableHandle] | None = None
        self._pre_hook: Callable[..., Any] | None = None
        # Explicit mode's optimizer post-hook: the full one while armed, a bare counter between samples.
        self._post_handle: RemovableHandle | None = None
        self._register_post: Callable[[Callable[..., Any]], RemovableHandle] | None = None
        self._post_hooks: tuple[Callable[..., Any], Callable[..., Any]] | None = None  # (counter, full)

    def _arm_pre_hook(self, register: Callable[[Callable[..., Any]], RemovableHandle]) -> None:
        self._register_pre = register
        self._pre_hook = self._guard(self._on_pre_step)
        self._pre_handle = register(self._pre_hook)
        self._handles.append(self._pre_handle)

    def _arm_post_hook(
        self, register: Callable[[Callable[..., Any]], RemovableHandle], counter: Callable[..., Any]
    ) -> None:
        self._register_post = register
        self._post_hooks = (counter, self._guard(self._on_post_step))
        self._post_handle = register(self._post_hooks[self._armed])
        self._handles.append(self._post_handle)

    def _sample_due(self, counter: int) -> bool:
        return counter >= self._next_sample

    def _end_step(self, counter: int | None) -> None:
        """Close a step: schedule the next sample (``counter`` is set when this step was sampled)."""
        now = time.perf_counter()
        if counter is None:
            if now >= self._flush_at:
                self._timed_flush()
                now = time.perf_counter()
            self._gap_steps += 1
            self._gap_end = now
            self._gap_cost = self._cost  # the flush above is in both: it cancels out of the step time
            return
        if self._gap_steps:
            # Without the recorder's time (the probe after a sample, the armed step before one, flushes),
            # which would otherwise shorten the gap it is divided into.
            spent = self._gap_end - self._last_tick - self._gap_cost
            self._step_time = max(spent, 0.0) / self._gap_steps
        self._sampled_since_flush += 1
        self._n_samples += 1
        gap = self.sample_every
        if self.adaptive and self._step_time and self._n_samples > 1:  # the first sample pays the setup
            need = self._cost / (self.overhead_budget * self._step_time)
            gap = min(max(gap, math.ceil(need)), max(MAX_SAMPLE_GAP, gap))
        self._next_sample = counter + gap
        self._cost = 0.0
        self._sampled_count = None
        if now >= self._flush_at or self._sampled_since_flush >= self.flush_every:
            self._timed_flush()
        self._last_tick = time.perf_counter()
        self._gap_steps = 0
        self._gap_cost = 0.0

    def _timed_flush(self) -> None:
        t0 = time.perf_counter()
        self._flush()
        if not self._sample_clock():  # else the entry point that called us times the flush too
            self._cost += time.perf_counter() - t0  # flushes count against the budget too

    def _sync_step_hooks(self) -> None:
        """The optimizer pre-hook and the loss-module hooks are on from the step before a sampled step until it
        is recorded (global mode: the loss-module hooks on every step unless backward() runs on the main loss
        call's output itself). Between samples the post-hook counts steps (global mode: and keeps train/loss)."""
        nxt = self._primary.count if self._primary is not None else self._records
        on = self._armed = nxt + 1 >= self._next_sample
        if not self.is_global or self._plain_node is not None:  # else global: every step (train/loss)
            self._arm_loss_hooks(on)
        if self._register_pre is None or on == (self._pre_handle is not None):
            return
        if on:
            self._pre_handle = self._register_pre(self._pre_hook)
            self._handles.append(self._pre_handle)
        else:
            self._pre_handle.remove()  # type: ignore[union-attr]
            self._handles.remove(self._pre_handle)  # type: ignore[arg-type]
            self._pre_handle = None
        if self._post_hooks is not None and self._post_handle is not None:
            self._post_handle.remove()
            self._handles.remove(self._post_handle)
            self._post_handle = self._register_post(self._post_hooks[on])  # type: ignore[misc]
            self._handles.append(self._post_handle)
