"""Named, documented bugs that ``muvo-train --fault NAME`` injects into an otherwise correct run.

Each fault is a small object: the bug, the symptom a user sees, what the doctor should report and the
check ids it should raise (first = the main one), and the step from which the symptom is present.
``train.py``, ``train_setup.py`` and ``step.py`` apply a fault only at its marked hooks (search for ``FAULT HOOK``); every hook of the
base class is the identity, so a healthy run goes through the same code.

    muvo-train --list-faults
    muvo-train --fault random-labels
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from muvo_model.data.frames import Frames

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Fault:
    """The identity fault; subclasses override the hooks they break."""

    name: str = "none"
    bug: str = ""
    symptom: str = ""
    doctor: str = ""
    checks: tuple[str, ...] = ()
    # First optimizer step at which the doctor found the main check in the small config of the tests
    # (128 frames, 48x48 images, 256 points, batch 32); larger runs can take longer.
    onset: int = 0

    # Hook: the model right after it is built (before the optimizer sees it).
    def model(self, model: nn.Module) -> nn.Module:
        return model

    # Hook: the parameters handed to the optimizer.
    def optimizer_params(self, model: nn.Module) -> Iterable[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    # Hook: a factor on the configured learning rate.
    lr_scale: float = 1.0
    # Hook: whether the loop zeroes gradients before each backward.
    zero_grad: bool = True
    # Hook: whether the frame loss weighs positives by the training prior (pos_weight).
    use_pos_weight: bool = True
    # Hook: whether the fusion model's per-point loss is added (faults that replace the loss turn it off).
    point_loss: bool = True

    # Hook: the frame labels the pipeline trains on (correct: the rendered anomaly labels).
    def labels(self, frames: Frames) -> torch.Tensor:
        return frames.frame_label

    # Hook: the frame loss from frame logits (N,) and labels (N,); ``bce`` is the correct loss.
    def frame_loss(self, logits: torch.Tensor, labels: torch.Tensor, bce: LossFn) -> torch.Tensor:
        return bce(logits, labels)

    # Hook: the string printed for the loss on a log line (correct: 6 significant digits);
    # ``frames`` is the training set's size.
    def format_loss(self, loss: float, frames: int, points_per_frame: int) -> str:
        return f"{loss:.6g}"

    def describe(self) -> str:
        """A few lines for ``--list-faults``."""
        return (
            f"{self.name}\n  bug:      {self.bug}\n  symptom:  {self.symptom}\n"
            f"  doctor:   {self.doctor}\n  checks:   {', '.join(self.checks)} (from step {self.onset})"
        )


def _head(model: nn.Module) -> nn.Sequential:
    """The frame head of either architecture."""
    head = getattr(model, "frame_head", None) or getattr(model, "anomaly_head", None)
    if not isinstance(head, nn.Sequential):
        raise TypeError(f"{type(model).__name__} has no frame head to break")
    return head


def _printed_4dp(value: float) -> str:
    return f"{value:.4f}"


class SelfSupervisedMean(Fault):
    name = "self-supervised-mean"
    bug = "the incident's original loss: mean(sigmoid(logit)) + 0.1*std(sigmoid(logit)), no labels at all"
    symptom = "the printed loss (4 decimals, as the original printed it) drops to 0.0000 and stays there"
    doctor = "the model only learns to output 'normal': outputs saturate/stop depending on the input, the loss is flat"
    checks = ("flat_loss", "constant_output", "vanishing_gradients")
    onset = 20
    point_loss = False

    def frame_loss(self, logits: torch.Tensor, labels: torch.Tensor, bce: LossFn) -> torch.Tensor:
        score = torch.sigmoid(logits)
        return score.mean() + 0.1 * score.std()

    def format_loss(self, loss: float, frames: int, points_per_frame: int) -> str:
        return _printed_4dp(loss)


class RandomLabels(Fault):
    name = "random-labels"
    bug = (
        "labels are random 10% pseudo-labels, drawn afresh for every sample at every step, independent of "
        "the input (plain BCE without pos_weight, as in the incident)"
    )
    symptom = "the loss settles at 0.325 and accuracy at 90%: it looks like learning, it is the label prior"
    doctor = (
        "loss at the prior's entropy H(0.1)=0.325 and accuracy at the majority rate; held-out AUROC near "
        "chance (0.43-0.45 at the defaults: frames with larger features, the anomalies, end slightly lower)"
    )
    checks = ("prior_baseline",)
    onset = 95
    point_loss = False
    use_pos_weight = False

    def labels(self, frames: Frames) -> torch.Tensor:
        # A new draw per call (per step): no frame keeps a label, so there is nothing to memorise. As in the
        # incident's create_pseudo_labels: torch.rand(B) < 0.1, the frames themselves are never looked at.
        return (torch.rand(len(frames), device=frames.frame_label.device) < 0.1).float()


class AnyVoxelLabel(Fault):
    name = "any-voxel-label"
    bug = "frame label = any point/voxel class id > 0, true for every frame (road and buildings are classes too)"
    symptom = "every training label is 1; the model learns a constant and the held-out AUROC is at chance"
    doctor = "single-class labels: positive fraction 1.0 in every batch"
    checks = ("label_imbalance", "flat_loss")
    onset = 0
    point_loss = False

    def labels(self, frames: Frames) -> torch.Tensor:
        return ((frames.point_class > 0) & frames.point_mask).any(dim=1).float()


class HiddenPrint(Fault):
    name = "hidden-print"
    bug = "the printed loss is divided by the training set's frames x points (a per-element normaliser) and shown with 4 decimals"
    symptom = "every log line says loss=0.0000 although the model trains normally"
    doctor = "printed loss 0.0000 while the recorded loss is about 0.5: the display hides the value"
    checks = ("display_precision",)
    onset = 0

    def format_loss(self, loss: float, frames: int, points_per_frame: int) -> str:
        return _printed_4dp(loss / (frames * points_per_frame))


class ZeroLR(Fault):
    name = "zero-lr"
    bug = "learning rate 0 (e.g. a scheduler that starts at 0 and never warms up)"
    symptom = "the loss does not move; nothing changes"
    doctor = "every trainable parameter has learning rate 0; weights frozen; loss flat"
    checks = ("frozen_parameters", "loss_not_decreasing")
    onset = 0
    lr_scale = 0.0


class DetachedLoss(Fault):
    name = "detached-loss"
    bug = (
        "the loss is computed from detached logits; a dummy requires_grad term keeps backward() from failing"
    )
    symptom = "training runs without error but the weights never change"
    doctor = "no parameter receives a gradient: all parameters frozen"
    checks = ("frozen_parameters", "loss_not_decreasing")
    onset = 0
    point_loss = False

    def __init__(self) -> None:
        self._dummy = torch.zeros((), requires_grad=True)

    def frame_loss(self, logits: torch.Tensor, labels: torch.Tensor, bce: LossFn) -> torch.Tensor:
        dummy = self._dummy.to(logits.device)
        return bce(logits.detach(), labels) + 0.0 * dummy


class FrozenParams(Fault):
    name = "frozen-params"
    bug = "the image encoder is left out of the optimizer (a param-group list that forgot a module)"
    symptom = "training still improves, through the other modules; the camera branch stays at its random init"
    doctor = "image_encoder.* never changes: parameters not in the optimizer"
    checks = ("frozen_parameters",)
    onset = 0

    def optimizer_params(self, model: nn.Module) -> Iterable[nn.Parameter]:
        return [
            p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("image_encoder.")
        ]


class SigmoidBeforeBCE(Fault):
    name = "sigmoid-before-bce"
    bug = "sigmoid applied to the logits before BCEWithLogitsLoss (which applies its own sigmoid)"
    symptom = "the loss barely moves in a narrow band; gradients are squashed"
    doctor = "the with-logits loss receives values in [0, 1]: probabilities, not logits"
    checks = ("wrong_loss_input",)
    onset = 0

    def frame_loss(self, logits: torch.Tensor, labels: torch.Tensor, bce: LossFn) -> torch.Tensor:
        return bce(torch.sigmoid(logits), labels)


class NoZeroGrad(Fault):
    name = "no-zero-grad"
    bug = "optimizer.zero_grad() is missing: gradients accumulate over all steps"
    symptom = "training is erratic; gradient norms grow step after step"
    doctor = "the previous step's gradient is still present at the next forward"
    checks = ("stale_gradients",)
    onset = 1
    zero_grad = False


class ExplodingLR(Fault):
    name = "exploding-lr"
    bug = "learning rate 1000x too large (a units mistake, e.g. 2 instead of 2e-3)"
    symptom = "the loss jumps from ~1 to 1e4-1e6 within the first steps (and may become NaN)"
    doctor = "the loss diverges, gradients explode and values become non-finite"
    checks = ("divergence", "constant_output", "loss_spike")
    onset = 1
    lr_scale = 1000.0


class SaturatingHead(Fault):
    name = "saturating-head"
    bug = "the frame head is a deep stack of Linear+Sigmoid layers (8 sigmoids)"
    symptom = "the frame loss stalls near its start; the frame score hardly depends on the input"
    doctor = "gradients vanish through the head; outputs nearly constant across the batch"
    checks = ("vanishing_gradients", "constant_output")
    onset = 0

    def model(self, model: nn.Module) -> nn.Module:
        head = _head(model)
        first = next(m for m in head if isinstance(m, nn.Linear))
        layers: list[nn.Module] = [nn.Linear(first.in_features, 64), nn.Sigmoid()]
        for _ in range(7):
            layers += [nn.Linear(64, 64), nn.Sigmoid()]
        layers.append(nn.Linear(64, 1))
        new = nn.Sequential(*layers)
        name = "frame_head" if hasattr(model, "frame_head") else "anomaly_head"
        setattr(model, name, new)
        return model


class DeadReLU(Fault):
    name = "dead-relu"
    bug = "the first Linear of the frame head gets bias -100 (a bad init): every ReLU after it outputs 0"
    symptom = "the frame score is the same for every input; the frame loss sits at its prior level"
    doctor = "outputs constant across the batch (zero spread); the head's gradients are exactly zero"
    checks = ("constant_output", "prior_baseline")
    onset = 0

    def model(self, model: nn.Module) -> nn.Module:
        first = next(m for m in _head(model) if isinstance(m, nn.Linear))
        with torch.no_grad():
            first.bias.fill_(-100.0)
        return model


FAULTS: dict[str, type[Fault]] = {
    f.name: f
    for f in (
        SelfSupervisedMean,
        RandomLabels,
        AnyVoxelLabel,
        HiddenPrint,
        ZeroLR,
        DetachedLoss,
        FrozenParams,
        SigmoidBeforeBCE,
        NoZeroGrad,
        ExplodingLR,
        SaturatingHead,
        DeadReLU,
    )
}


def get_fault(name: str | None) -> Fault:
    """The fault called ``name`` (None or "none" = no fault).

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if name is None or name == "none":
        return Fault()
    cls = FAULTS.get(name)
    if cls is None:
        raise ValueError(f"unknown fault '{name}'; known faults: {', '.join(FAULTS)}")
    return cls()


def prior_entropy(p: float) -> float:
    """Binary cross-entropy of predicting the prior p: H(p) = -p ln p - (1-p) ln(1-p)."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


__all__ = ["FAULTS", "Fault", "get_fault", "prior_entropy"]
