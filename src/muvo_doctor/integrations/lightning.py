"""``DoctorCallback`` for Lightning (``lightning.pytorch``, or the older ``pytorch_lightning`` package).

    from muvo_doctor.integrations.lightning import DoctorCallback
    trainer = lightning.Trainer(max_steps=10_000, callbacks=[DoctorCallback(stop_on="dead")])
    trainer.fit(model, loader)

What it records, per optimizer step (after it): the loss that ``training_step`` returned (a tensor,
or the ``"loss"`` of a dict), the model outputs when the dict carries ``"logits"`` (or
``"outputs"``), and the labels: the dict's ``"labels"``/``"y"``, else the batch's (see
:func:`muvo_doctor.integrations.labels_of`). The metrics logged with ``self.log`` join at the end of
each validation (``trainer.callback_metrics``: one host sync there, as Lightning's own checkpoint and
early-stopping callbacks make; never one per step). What it writes to the trainer's loggers and how
``stop_on`` works: :mod:`muvo_doctor.integrations`. The package itself pulls in no Lightning: install
``muvo-doctor[lightning]``.
"""

from __future__ import annotations

from typing import Any

import torch

from muvo_doctor.integrations import Watching, labels_of

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package of Lightning 1.x/2.x
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError:
        raise ImportError(
            "muvo_doctor.integrations.lightning needs Lightning: pip install 'muvo-doctor[lightning]'"
        ) from None


def _step_outputs(outputs: Any) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(loss, model outputs, labels) from what ``training_step`` returned."""
    if isinstance(outputs, torch.Tensor):
        return outputs, None, None
    if not isinstance(outputs, dict):
        return None, None, None
    loss = outputs.get("loss")
    out = outputs.get("logits", outputs.get("outputs"))
    labels = labels_of(outputs)
    return (
        loss if isinstance(loss, torch.Tensor) else None,
        out if isinstance(out, torch.Tensor) else None,
        labels,
    )


class DoctorCallback(Watching, pl.Callback):
    """Watch a Lightning fit with the doctor: findings to the loggers, optional stop, the report at the end.

    Args:
        stop_on: ``"dead"`` sets ``trainer.should_stop`` once the run is confirmed dead (Lightning then
            ends the epoch, runs its checkpoint callbacks and stops); None only watches.
        config: thresholds and cadence (``muvo_doctor.load_config("doctor.toml")``); the defaults of
            ``muvo-doctor run`` otherwise.
        print_report: print the report when training ends (global rank 0 only).
        stream: where the report is printed (stdout by default).

    After ``fit``: ``callback.report`` (the report of docs/contract.md) and ``callback.doctor``.
    """

    source = "lightning"
    _last_step = -1

    # -- Lightning hooks -------------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.session.doctor.source = f"lightning: {type(pl_module).__name__}"
        if self.session.stop_on is not None and trainer.world_size > 1:
            # A stop decided on one process's batches alone would leave the others waiting in a collective.
            pl.utilities.rank_zero_warn(
                "muvo-doctor: stop_on is applied on a single process only; this run reports without stopping"
            )
            self.session.stop_on = None
        optimizers = trainer.optimizers
        self.session.attach(pl_module, optimizers[0] if optimizers else None)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if step == self._last_step:
            return  # accumulating gradients: the optimizer has not stepped since the last record
        self._last_step = step
        loss, out, labels = _step_outputs(outputs)
        if loss is None:
            return  # training_step skipped this batch (returned None)
        if (recorder := self.session.recorder) is not None:
            recorder.record(
                step, loss=loss, outputs=out, labels=labels if labels is not None else labels_of(batch)
            )
        self._log(trainer, step)
        why = self.session.should_stop()
        if why is not None:
            trainer.should_stop = True
            pl.utilities.rank_zero_info(why)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.session.started or trainer.sanity_checking:
            return
        values = {}
        for key, v in trainer.callback_metrics.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                values[key] = float(v)  # a host sync, once per validation
            elif isinstance(v, int | float):
                values[key] = v
        self.session.metrics(int(trainer.global_step), values)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.session.started:
            return
        self.session.finish()
        self._log(trainer, int(trainer.global_step), final=True)
        if trainer.is_global_zero:
            self.session.show()

    # -- helpers -----------------------------------------------------------------------------------
    def _log(self, trainer: Any, step: int, final: bool = False) -> None:
        scalars, texts = self.session.updates()
        if not scalars:
            return
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
            # Text where the logger takes it (TensorBoard's add_text); others get the scalars only.
            add_text = getattr(getattr(logger, "experiment", None), "add_text", None)
            if callable(add_text):
                for tag, text in texts.items():
                    add_text(tag, text, step)
            if final:
                logger.save()  # the last rows, written after Lightning's own last save


__all__ = ["DoctorCallback"]
