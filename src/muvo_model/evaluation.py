"""Evaluation on the held-out split: frame loss, accuracy, ranking metrics, point AUROC (one host sync)."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from muvo_model.data.frames import Frames


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Frames,
    *,
    pos_weight: torch.Tensor | None,
    batch_size: int,
    amp_dtype: torch.dtype | None,
    max_points: int = 2_000_000,
) -> dict[str, float]:
    """Frame-level loss, accuracy, AUROC, AUPRC, FPR95 and point-level AUROC against the true labels."""
    from muvo_model import metrics

    was_training = model.training
    model.eval()
    frame, point = [], []
    device_type = data.image.device.type
    autocast = torch.autocast(device_type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    for i in range(0, len(data), batch_size):
        b = data.index(slice(i, i + batch_size))
        with autocast:
            out = model(b.image, b.points, b.point_mask)
        frame.append(out["frame_logit"].float())
        if out.get("point_logit") is not None:
            point.append(out["point_logit"].float())
    model.train(was_training)
    logits = torch.cat(frame)
    y = data.frame_label
    res = {
        "loss": F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight).item(),
        "acc": ((logits > 0) == (y > 0.5)).float().mean().item(),
    }
    s, t = logits.cpu().numpy(), y.cpu().numpy()  # host sync
    try:
        res |= {
            "auroc": metrics.auroc(s, t),
            "auprc": metrics.auprc(s, t),
            "fpr95": metrics.fpr_at_95_tpr(s, t),
        }
    except ValueError:  # a single-class split: ranking metrics are undefined
        res |= {"auroc": float("nan"), "auprc": float("nan"), "fpr95": float("nan")}
    if point:
        pl = torch.cat(point)[data.point_mask]
        py = data.point_label[data.point_mask]
        if pl.numel() > max_points:  # cost: numpy sorts; a fixed random subset keeps eval cheap on big sets
            keep = torch.randperm(pl.numel(), generator=torch.Generator().manual_seed(0))[:max_points]
            pl, py = pl[keep.to(pl.device)], py[keep.to(py.device)]
        try:
            res["point_auroc"] = metrics.auroc(pl.cpu().numpy(), py.cpu().numpy())
        except ValueError:
            res["point_auroc"] = float("nan")
    return res
