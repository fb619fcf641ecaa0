"""The training step: loss and prior weights, one forward-backward-update without host sync, a step loop."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from muvo_model.config import RunConfig
from muvo_model.data.frames import Frames
from muvo_model.faults import Fault
from muvo_model.train_setup import BatchSampler, Dist


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


def positive_fraction(x: torch.Tensor) -> float:
    return float(x.float().mean().item()) if x.numel() else 0.0


def _pos_weight(p: float, device: torch.device, cap: float) -> torch.Tensor:
    # A single-class split has no prior to balance (the doctor's label_imbalance says so): weight 1.
    w = (1 - p) / p if 0.0 < p < 1.0 else 1.0
    return torch.tensor(min(w, cap), device=device)


def loss_spec(cfg: RunConfig, train_set: Frames, fault: Fault, dist: Dist) -> tuple[LossSpec, float]:
    """The loss's prior weights from the training split; also the training prior itself."""
    device = dist.device
    prior = positive_fraction(fault.labels(train_set))  # FAULT HOOK: the labelling function (prior only)
    point_prior = positive_fraction(train_set.point_label[train_set.point_mask])
    spec = LossSpec(
        pos_weight=_pos_weight(prior, device, 100.0) if fault.use_pos_weight else None,  # FAULT HOOK
        point_pos_weight=_pos_weight(point_prior, device, 50.0),
        point_weight=cfg.train.point_loss_weight,
        # The healthy configuration uses every parameter, so only a fault or a disabled point loss pays.
        anchor_outputs=dist.world > 1 and (fault.name != "none" or cfg.train.point_loss_weight == 0),
    )
    return spec, prior
