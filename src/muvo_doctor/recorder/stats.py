"""Output, label and accuracy statistics of one batch, as device tensors (no host sync)."""

from __future__ import annotations

import torch

MAX_CLASSES = 100  # label/fraction/<k> for k < 100; larger class ids are not histogrammed
SATURATED_LOGIT = 6.0  # |logit| above this counts as saturated
SATURATED_PROB = 1e-3  # a probability this close to 0 or 1 counts as saturated
_CLASS_KINDS = ("cross_entropy", "nll")


def batch_stats(
    outputs: torch.Tensor | None, labels: torch.Tensor | None, kind: str | None
) -> dict[str, tuple[tuple[str, ...], torch.Tensor, str]]:
    """Output, label and accuracy statistics of one batch, as device tensors.

    ``kind`` is the loss call's kind in global mode (it decides how labels read), ``None`` in explicit mode.
    """
    out: dict[str, tuple[tuple[str, ...], torch.Tensor, str]] = {}
    o = None
    is_prob = None
    if isinstance(outputs, torch.Tensor) and outputs.numel() > 0:
        o = outputs.detach()
        o = o.float() if o.dtype != torch.float32 else o
        names, vals, is_prob = _output_stats(o)
        out["outputs"] = (names, vals, "plain")
    if isinstance(labels, torch.Tensor) and labels.numel() > 0:
        lab = _label_stats(o, labels.detach(), is_prob, kind)
        if lab is not None:
            out["labels"] = lab
    return out


def _output_stats(o: torch.Tensor) -> tuple[tuple[str, ...], torch.Tensor, torch.Tensor]:
    """mean, std across the batch, saturated fraction, min, max, non-finite count of outputs ``o``."""
    mn, mx = torch.aminmax(o)
    is_prob = (mn >= 0) & (mx <= 1)
    sat_logit = (o.abs() > SATURATED_LOGIT).float().mean()
    sat_prob = ((o < SATURATED_PROB) | (o > 1 - SATURATED_PROB)).float().mean()
    sat = torch.where(is_prob, sat_prob, sat_logit)
    bad = (~torch.isfinite(o)).sum().float()
    n = o.shape[0] if o.dim() > 0 else 1
    if n > 1:
        # Spread across samples, per output unit, averaged over units: 0 means input-independent.
        std = o.reshape(n, -1).std(dim=0, correction=0).mean()
        names = (
            "output/mean",
            "output/std",
            "output/saturated",
            "output/min",
            "output/max",
            "nonfinite/output",
        )
        vals = torch.stack([o.mean(), std, sat, mn, mx, bad])
    else:
        names = ("output/mean", "output/saturated", "output/min", "output/max", "nonfinite/output")
        vals = torch.stack([o.mean(), sat, mn, mx, bad])
    return names, vals, is_prob


def _label_stats(
    o: torch.Tensor | None, y: torch.Tensor, is_prob: torch.Tensor | None, kind: str | None
) -> tuple[tuple[str, ...], torch.Tensor, str] | None:
    """Label histogram (binary: positive fraction; multiclass: counts) and accuracy when outputs fit."""
    multi_out = o is not None and o.dim() >= 2 and o.shape[1] > 1
    if kind in _CLASS_KINDS and not multi_out:
        return None  # unbatched class scores: nothing to histogram reliably
    if multi_out and not y.is_floating_point() and y.dim() == o.dim() - 1 and y.shape[0] == o.shape[0]:  # type: ignore[union-attr]
        return _class_stats(o, y, o.shape[1])  # type: ignore[union-attr]
    if multi_out and y.is_floating_point() and y.shape == o.shape and kind in _CLASS_KINDS:  # type: ignore[union-attr]
        return _soft_class_stats(o, y)  # type: ignore[arg-type]
    if kind is not None and kind not in ("bce_with_logits", "bce"):
        return None  # regression losses etc.: no label histogram
    if y.is_floating_point() or y.dtype == torch.bool or (o is not None and o.numel() == y.numel()):
        pos = y > 0.5 if y.is_floating_point() else y > 0
        frac = pos.float().mean()
        if o is not None and o.numel() == y.numel():
            if kind == "bce_with_logits":
                pred = o > 0
            elif kind == "bce":
                pred = o > 0.5
            else:  # explicit mode: threshold 0.5 for probabilities, 0 for logits, decided on the device
                thr = torch.where(is_prob, 0.5, 0.0) if is_prob is not None else 0.0
                pred = o > thr
            acc = (pred.reshape(-1) == pos.reshape(-1)).float().mean()
            return ("label/positive_fraction", "train/acc"), torch.stack([frac, acc]), "binary"
        return ("label/positive_fraction",), frac.reshape(1), "binary"
    return _class_stats(None, y, MAX_CLASSES)


def _class_stats(
    o: torch.Tensor | None, y: torch.Tensor, k: int
) -> tuple[tuple[str, ...], torch.Tensor, str]:
    kb = min(k, MAX_CLASSES)
    yl = y.reshape(-1).long()
    valid = (yl >= 0) & (yl < kb)  # ignore_index (-100) and ids >= 100 are left out
    counts = torch.zeros(kb, device=y.device).index_add_(0, yl.clamp(0, kb - 1), valid.float())
    if o is None:
        return (), counts, "classes"
    pred = o.argmax(dim=1).reshape(-1)
    acc = ((pred == yl) & valid).sum().float() / valid.sum().clamp_min(1).float()
    return ("train/acc",), torch.cat([counts, acc.reshape(1)]), "classes"


def _soft_class_stats(o: torch.Tensor, y: torch.Tensor) -> tuple[tuple[str, ...], torch.Tensor, str]:
    kb = min(o.shape[1], MAX_CLASSES)
    yy = y.movedim(1, -1).reshape(-1, o.shape[1]).float()
    counts = yy[:, :kb].sum(dim=0)
    acc = (o.argmax(dim=1).reshape(-1) == yy.argmax(dim=1)).float().mean()
    return ("train/acc",), torch.cat([counts, acc.reshape(1)]), "classes"
