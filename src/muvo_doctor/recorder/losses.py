"""Loss calls: which call of a step is its training loss, and the statistics of that call's input."""

from __future__ import annotations

import math
from typing import Any

import torch

from muvo_doctor.recorder.stats import batch_stats

_LOGIT_KINDS = ("bce_with_logits", "cross_entropy")
# Autograd nodes that only scale one loss (GradScaler, accumulation's loss / k, a mean of a
# reduction="none" loss): backward() through them still optimises that loss call.
_SCALE_NODES = ("MulBackward0", "DivBackward0", "MeanBackward0")


class LossCalls:
    """The Recorder's part that sees loss calls (loss-module hooks, the bootstrap's wrapped functional
    losses, ``backward()``) and writes the step's ``train/loss`` and loss-input statistics."""

    def _init_loss_calls(self) -> None:
        # Loss calls of the step in progress: the main one is the call with the fewest target elements
        # (the first on ties), e.g. the frame loss of ``frame_bce + 0.5 * point_bce``.
        self._main_loss: torch.Tensor | None = None  # its value (global mode)
        self._main_size = math.inf  # its target's element count
        self._main_set = False
        self._call_outs: list[torch.Tensor] = []  # every loss call's output (their autograd nodes, lazily)
        self._step_backward: torch.Tensor | None = None  # last backward() tensor of the step
        self._step_formula = False  # a backward() tensor combined several loss calls (or none)
        self._last_loss_out: torch.Tensor | None = None
        self._pending: dict[str, tuple[tuple[str, ...], torch.Tensor, str]] = {}
        # Global mode: once every hooked step showed train/loss to be the backward() tensor itself (backward()
        # on the main loss call's output, ``loss = crit(out, y); loss.backward()``, or on a formula of calls),
        # the loss-module hooks are on only around sampled steps, as in explicit mode (a hooked module takes
        # torch's slower call path: ~30 us a step on a CPU with ours), and between samples train/loss is the
        # backward() tensor. Its autograd node type is checked on those steps: another type (say, the loss
        # now scaled by a GradScaler) turns the hooks on for good and leaves that one step without
        # train/loss rather than with a wrong value.
        self._plain_node: type | None = None  # the backward() tensor's node type, while hooks may be off
        self._plain_ok = True  # no hooked step contradicted it yet
        self._step_unknown = False  # hooks off and backward() ran on something else: no train/loss

    def _from_loss_call(self, fn: Any) -> bool:
        """Whether a backward() tensor is one loss call's output, maybe scaled (AMP, accumulation, mean).

        Host-only: follows at most a few autograd nodes, reads no tensor.
        """
        calls = [o.grad_fn for o in self._call_outs]
        for _ in range(4):
            if fn is None:
                return False
            for c in calls:
                if fn is c:
                    return True
            if fn.name() not in _SCALE_NODES:
                return False
            inputs = [f for f, _ in fn.next_functions if f is not None]
            if len(inputs) != 1:
                return False  # a product of two tensors that both need gradients is not a scaling
            fn = inputs[0]
        return False

    def _observe_loss(
        self, kind: str, input: torch.Tensor, target: torch.Tensor | None, output: torch.Tensor
    ) -> None:
        if (
            not torch.is_grad_enabled()
            or not isinstance(output, torch.Tensor)
            or (n_out := output.numel()) == 0
        ):
            return  # evaluation losses (no_grad) are not the training loss
        if output is self._last_loss_out:
            return  # the same call seen twice (a loss module and the function it calls)
        # The counter the optimizer pre-hook (or record()) will sample this step by.
        counter = self._primary.count if self._primary is not None else self._records
        due = counter >= self._next_sample
        if not due and not self.is_global:
            return  # explicit mode: record() has the loss; only a sampled step's loss input is kept
        self._last_loss_out = output
        if self.is_global and len(self._call_outs) < 64:
            self._call_outs.append(output)
        # The main loss of a step is the call with the fewest target elements (the first on ties):
        # a per-sample loss rather than a per-point or per-pixel auxiliary one.
        ref = target if isinstance(target, torch.Tensor) else input
        size = ref.numel() if isinstance(ref, torch.Tensor) else math.inf
        if self._main_set and size >= self._main_size:
            return
        self._main_set, self._main_size = True, size
        if self.is_global:  # detached when the step closes (the reference ends with the step)
            self._main_loss = output if n_out == 1 else output.detach().float().mean()
        if self._pending:
            self._pending.clear()  # statistics of a call that is no longer the main one
        if not due:
            return
        if not isinstance(input, torch.Tensor) or input.numel() == 0:
            return
        x = input.detach()
        x = x.float() if x.dtype != torch.float32 else x
        if kind in _LOGIT_KINDS:
            mn, mx = torch.aminmax(x)
            self._pending["loss_input"] = (
                ("loss_input/logits/min", "loss_input/logits/max"),
                torch.stack([mn, mx]),
                "plain",
            )
        elif kind == "nll":
            self._pending["loss_input"] = (("loss_input/logprobs/max",), x.max().reshape(1), "plain")
        if self.is_global:  # explicit mode has the outputs and labels from record()
            self._pending.update(batch_stats(x, target, kind=kind))

    def _close_loss_calls(self, step: int) -> None:
        """Write the main loss call's statistics (and, in global mode, the step's loss); reset."""
        if self.is_global:
            if self._plain_ok and (self._loss_handles or self._discovery_handles):  # hooks saw its calls
                self._check_plain()
            # train/loss: the main loss call, unless backward() ran on a combination of calls (what the
            # program optimises, and prints): then that tensor. A scaled call (GradScaler) is still the call.
            formula = self._step_formula or self._main_loss is None
            loss = self._step_backward if formula else self._main_loss
            if loss is not None and not self._step_unknown:
                self._append_loss(step, loss)
            self._step_backward = None
            self._step_unknown = False
        if self._pending:
            for names, values, kind in self._pending.values():
                self._append(step, names, values, kind)
            self._pending.clear()
        if self._main_set or self._last_loss_out is not None:  # a loss call this step (hooks on)
            self._main_loss = None
            self._main_set, self._main_size = False, math.inf
            self._step_formula = False
            self._last_loss_out = None
            if self._call_outs:
                self._call_outs = []
        elif self._step_formula:
            self._step_formula = False

    def _check_plain(self) -> None:
        """Global mode, a step whose loss calls were hooked: is train/loss the backward() tensor itself?

        It is when backward() ran on the main call's output, or on a combination of calls (a formula).
        Not when the top node only scales (a scaled call's train/loss is the call: the hooks stay on).
        """
        back = self._step_backward
        if back is not None and (back is self._main_loss or self._step_formula):
            node = type(back.grad_fn)
            if node.__name__ not in _SCALE_NODES:
                if self._plain_node is None:  # the first hooked step sets the type
                    self._plain_node = node
                    return
                if node is self._plain_node:
                    return
        self._no_plain()

    def _no_plain(self) -> None:
        """The loss-module hooks on every step from now on (train/loss from the loss call each step)."""
        self._plain_ok = False
        self._plain_node = None
        self._arm_loss_hooks(True)

    def _backward_unhooked(self) -> None:
        """backward() between samples (loss-module hooks off) on another autograd node than the loss call's."""
        self._step_unknown = True  # this step's train/loss left out
        self._no_plain()

    def _close_global_step(self) -> None:
        """Write the loss and the batch statistics of the step about to be taken."""
        self._close_loss_calls(self.step)
