"""``DoctorCallback`` for the Hugging Face ``transformers.Trainer``.

    from muvo_doctor.integrations.hf import DoctorCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[DoctorCallback(stop_on="dead")])
    trainer.train()

What it records, per optimizer step (after it): the model's own ``loss``, ``logits`` and the
``labels`` it was called with (a forward hook on the model, training forwards only; the last
micro-batch of a step under gradient accumulation), and the metrics of ``on_log`` (``eval_loss``
-> ``val/loss``, ``eval_accuracy`` -> ``val/acc``; the Trainer's evaluation logs through it too).
A model called without ``labels`` (a custom ``compute_loss``) is judged by the logged ``loss``.

Its findings go into the logs the Trainer writes: ``state.log_history`` (``trainer_state.json`` of
every checkpoint) and every ``report_to`` integration (TensorBoard takes the text too). The Trainer
calls its callbacks in list order and gives them no reference to itself, so the callback moves
itself to the front of the Trainer's list (found as the caller of its first event) to add its keys
to a log before the integrations write it. What is logged and how ``stop_on`` works:
:mod:`muvo_doctor.integrations`. The package itself pulls in no transformers: install
``muvo-doctor[hf]``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import torch

from muvo_doctor.integrations import Watching

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import CallbackHandler
except ImportError:
    raise ImportError(
        "muvo_doctor.integrations.hf needs transformers: pip install 'muvo-doctor[hf]'"
    ) from None


class DoctorCallback(Watching, TrainerCallback):
    """Watch a Trainer run with the doctor: findings to the Trainer's logs, optional stop, the report at the end.

    Args:
        stop_on: ``"dead"`` sets ``control.should_training_stop`` once the run is confirmed dead (and
            ``control.should_save`` unless ``save_strategy="no"``, so a checkpoint is written, as at
            the end of a run); None only watches.
        config: thresholds and cadence (``muvo_doctor.load_config("doctor.toml")``); the defaults of
            ``muvo-doctor run`` otherwise.
        print_report: print the report when training ends (the main process only).
        stream: where the report is printed (stdout by default).

    After ``train()``: ``callback.report`` (the report of docs/contract.md) and ``callback.doctor``.
    """

    source = "transformers"
    _batch: tuple[Any, Any, Any] | None = None  # (loss, logits, labels) of the last training forward
    _hook: torch.utils.hooks.RemovableHandle | None = None
    _forward_loss = False  # the model returned its loss at least once
    _finished = False

    # -- Trainer events ------------------------------------------------------------------------------
    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._first_in_line(sys._getframe(1))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._first_in_line(sys._getframe(1))  # added with trainer.add_callback after the Trainer was made
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        if not isinstance(model, torch.nn.Module) or self.session.started:
            return
        self.session.doctor.source = f"transformers: {type(model).__name__}"
        if self.session.stop_on is not None and args.world_size > 1:
            # A stop decided on one process's batches alone would leave the others waiting in a collective.
            print(
                "muvo-doctor: stop_on is applied on a single process only; this run reports without stopping",
                file=sys.stderr,
            )
            self.session.stop_on = None
        self.session.attach(model, optimizer)
        self._hook = model.register_forward_hook(self._on_forward, with_kwargs=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.session.started or self._finished:
            return
        step = int(state.global_step)
        if self._batch is not None:
            loss, logits, labels = self._batch
            self._batch = None
            if (recorder := self.session.recorder) is not None:
                recorder.record(step, loss=loss, outputs=logits, labels=labels)
        why = self.session.should_stop()
        if why is not None:
            control.should_training_stop = True
            if args.save_strategy != "no":
                control.should_save = True  # as the Trainer does at its last step
            print(why, file=sys.stderr)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not self.session.started or not isinstance(logs, dict):
            return
        step = int(state.global_step)
        if "train_runtime" in logs:
            # The Trainer's last log (means over the run, not points), after its last evaluation: the
            # final evaluation goes into it, so the final findings reach the loggers.
            self._finish()
        elif not self._finished:
            recorder = self.session.recorder
            if recorder is not None and not self._forward_loss and isinstance(logs.get("loss"), int | float):
                recorder.record(step, loss=float(logs["loss"]))  # a model that does not return its loss
            self.session.metrics(step, logs)
        scalars, texts = self.session.updates()
        if not scalars:
            return
        logs.update(scalars)
        logs.update(texts)
        # The Trainer appended a copy of these logs to its history just before this event.
        history = state.log_history
        if history and isinstance(history[-1], dict) and history[-1].get("step") == step:
            history[-1].update(scalars)
            history[-1].update(texts)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.session.started:
            return
        self._finish()
        if state.is_world_process_zero:
            self.session.show()

    # -- helpers -------------------------------------------------------------------------------------
    def _first_in_line(self, caller: Any) -> None:
        """Move this callback first in the Trainer's list (the handler that called this event)."""
        handler = caller.f_locals.get("self")
        if isinstance(handler, CallbackHandler) and any(cb is self for cb in handler.callbacks):
            if handler.callbacks[0] is not self:
                handler.callbacks.remove(self)
                handler.callbacks.insert(0, self)

    def _on_forward(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if not module.training or not torch.is_grad_enabled():
            return  # evaluation and generation forwards are not training steps
        try:
            self._keep(output, kwargs.get("labels"))
        except Exception as exc:  # fail open: the training goes on, unwatched from here
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
            print(f"muvo-doctor: the model's forward hook failed and is removed ({exc!r})", file=sys.stderr)

    def _keep(self, output: Any, labels: Any) -> None:
        """Keep the training forward's loss, logits and labels (detached references: no host read)."""
        get = output.get if isinstance(output, Mapping) else None
        loss = get("loss") if get else (output[0] if isinstance(output, tuple) and output else None)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return
        logits = get("logits") if get else None
        self._forward_loss = True
        self._batch = (
            loss.detach(),
            logits.detach() if isinstance(logits, torch.Tensor) else None,
            labels.detach() if isinstance(labels, torch.Tensor) else None,
        )

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.session.finish()


__all__ = ["DoctorCallback"]
