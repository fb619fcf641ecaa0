"""What a logged key means: a signal (and its ``split/metric`` name), the step axis, the epoch axis,
or bookkeeping. Every reader names series through this module, so a key read from text, CSV, JSON
or TensorBoard gets the same name, and the checks that look at keys (``display_precision``) read
them with the same rules.
"""

from __future__ import annotations

import re

# Keys that are an axis (they set the step, they are not a signal).
STEP_KEYS = frozenset(
    {
        "step",
        "steps",
        "global_step",
        "iter",
        "iters",
        "iteration",
        "_step",
        # "eval step 120 val_auroc=0.91": the training step an evaluation line belongs to
        "eval_step",
        "train_step",
        "val_step",
        "trainer/global_step",
        "num_updates",
        "current_steps",  # LLaMA-Factory trainer_log.jsonl
        "current_step",
    }
)
EPOCH_KEYS = frozenset({"epoch", "epochs", "train epoch", "train_epoch", "_epoch"})
# Split words (a key's prefix or suffix, a line's leading word, a table's group header).
SPLITS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "eval": "val",
    "evaluation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
# Bookkeeping numbers that are not training signals (time, memory, throughput, sizes, ids, hardware).
_NOISE = re.compile(
    r"(^|[/_ ])(time|data_time|eta|memory|mem|max_mem|gpu_mem|runtime|"
    r"samples_per_second|steps_per_second|total_flos|flos|batch|batch_size|bs|it|seed|num_.*|"
    r"n_.*|id|pid|rank|world_size|workers|year|day|hour|min|sec|seconds|ms|size|line|file|version|v_num|data|"
    r"wps|ups|wpb|bsz|wall|train_wall|clip|gpu|gpus|cpu|cuda|device|group|port|http|https|img_size|"
    r"labels|instances|images|targets|class|classes|oom|speed|sec_per_batch|hr_per_epoch|dtype|best|"
    # solver settings printed in a config dump (Caffe prototxt, argparse Namespace): not series
    r"weight|weights|weight_decay|mult|shape|stride|pad|kernel_size|num_output|display|snapshot|max_iter|"
    r"power|top_k|momentum|gamma|interval|dropout_ratio|mean_value|scale|patience|warmup|nbatches|"
    r"samples|cost|ips|eta_seconds|scaler|total_steps|max_steps|percentage|progress)$"
    r"|\.(py|cpp|cc|c|h|hpp|cu)$|per_second$|_time$|\d\.\d|^https?\b",
)
# Accuracy-like signals are fractions; a value printed in 0..100 without "%" is a percentage.
_FRACTION = re.compile(r"(^|/)(acc|accuracy|auroc|auprc|map|map50|fpr95|precision|recall|f1)$")

# Two-word keys ("Train Loss", "Learning Rate", "Anomaly Score") are joined with "_", unless the
# first word is a log level or a filler word ("INFO step 200", "the loss 0.3", "has acc 0.2"): then
# it is dropped.
_DROP_FIRST = frozenset(
    "info debug warning warn error critical trace the a an is at of on in to and for with by "
    "current final new saved has had have was were got now its our my then".split()
)

# Canonical metric -> its split when the key names none ("loss" is train/loss, "auroc" val/auroc).
_METRICS = {
    "loss": "train",
    "acc": "train",
    "auroc": "val",
    "auprc": "val",
    "fpr95": "val",
    "map": "val",
    "map50": "val",
    "precision": "val",
    "recall": "val",
}
_ALIASES = {
    "loss": "loss",
    "total_loss": "loss",
    "loss_total": "loss",
    "objective": "loss",
    "acc": "acc",
    "accuracy": "acc",
    "top1": "acc",
    "acc1": "acc",
    "acc_top1": "acc",
    "top1_acc": "acc",
    "accuracy_top1": "acc",
    "top_1_acc": "acc",
    "top_1": "acc",
    "prec1": "acc",
    "categorical_accuracy": "acc",
    "sparse_categorical_accuracy": "acc",
    "binary_accuracy": "acc",
    "auroc": "auroc",
    "auc": "auroc",
    "roc_auc": "auroc",
    "auc_roc": "auroc",
    "auprc": "auprc",
    "ap": "auprc",
    "average_precision": "auprc",
    "pr_auc": "auprc",
    "fpr95": "fpr95",
    "fpr_95": "fpr95",
    "fpr@95": "fpr95",
    "fpr95tpr": "fpr95",
    "map": "map",
    "map50-95": "map",
    "map50_95": "map",
    "map_50_95": "map",
    "map_0_5_0_95": "map",
    "map@_5_95": "map",
    "bbox_map": "map",
    "coco_bbox_map": "map",
    "bbox_ap": "map",
    "coco_bbox_map_50": "map50",
    "bbox_ap50": "map50",
    "map50-95(b)": "map",
    "map50": "map50",
    "map_50": "map50",
    "map_0_5": "map50",
    "map@_5": "map50",
    "map50(b)": "map50",
    "bbox_map_50": "map50",
    "precision": "precision",
    "precision(b)": "precision",
    "box(p": "precision",
    "recall": "recall",
    "recall(b)": "recall",
}
_LR = {"lr", "learning_rate", "learningrate", "lr/pg0", "lr_pg0", "lr-adam", "lr-sgd", "lr-adamw"}
_MODIFIERS = ("avg_", "average_", "mean_", "running_", "epoch_", "batch_", "total_")
_SEP_RE = re.compile(r"[\s_/:]+")
_SPLIT_PREFIX_RE = re.compile(
    r"(train|training|val|valid|validate|validation|eval|evaluation|dev|test|testing)[_/.\-]"
)
_SPLIT_SUFFIX_RE = re.compile(r"[_/.\-](train|training|val|valid|validation|eval|dev|test)$")
# "target_val_acc", "source_train_acc": a split word between a qualifier and the metric
_SPLIT_INFIX_RE = re.compile(r"[_/.\-](train|training|val|valid|validation|eval|test)[_/.\-]")
_PG_LR_RE = re.compile(r"(?:x[/_])?lr(?:_pg)?(\d)$")
_name_cache: dict[str, str] = {}

# What a key is, for the readers' axis logic.
SIGNAL, STEP, EPOCH, NOISE = 0, 1, 2, 3
_kinds: dict[str, tuple[str | None, bool, int]] = {}


def key_of(raw: str) -> str:
    """The key as printed, lowercased; of two words, joined by ``_`` (a log level or filler word is dropped)."""
    k = raw.lower()
    if " " in k:
        first, _, second = k.partition(" ")
        return second if first in _DROP_FIRST else f"{first}_{second}"
    return k


def signal_name(key: str) -> str:
    """Normalise a logged key to a signal name.

    ``loss`` -> ``train/loss``, ``val_loss``/``eval_loss`` -> ``val/loss``, ``accuracy``/``acc`` ->
    ``train/acc``, ``val_accuracy`` -> ``val/acc``, ``lr``/``learning_rate`` -> ``optim/lr``,
    ``auroc``/``auc`` -> ``val/auroc``, ``grad_norm`` -> ``grad/norm/total``. A loss of a named part
    without a split is a training loss (``box_loss`` -> ``train/box_loss``). Unknown keys keep
    their normalised name (lowercase, ``/`` between a split word and the rest): ``avg_score`` ->
    ``avg_score``, ``val_f1`` -> ``val/f1``.
    """
    cached = _name_cache.get(key)
    if cached is not None:
        return cached
    k = key_of(key.strip().strip("'\""))
    k = k.replace("metrics/", "").replace(" ", "_")
    name = _normalise(k)
    if len(_name_cache) < 10_000:
        _name_cache[key] = name
    return name


def _canonical(metric: str) -> str | None:
    if metric in _ALIASES:
        return _ALIASES[metric]
    for suffix in ("_step",):
        if metric.endswith(suffix) and metric[: -len(suffix)] in _ALIASES:
            return _ALIASES[metric[: -len(suffix)]]
    for prefix in _MODIFIERS:
        if metric.startswith(prefix) and metric[len(prefix) :] in _ALIASES:
            return _ALIASES[metric[len(prefix) :]]
    return None


def split_of(k: str) -> tuple[str | None, str]:
    """``(split or None, the rest)`` of a normalised key: ``val_loss`` -> ``("val", "loss")``."""
    m = _SPLIT_PREFIX_RE.match(k)
    if m:
        return SPLITS[m.group(1)], k[m.end() :]
    m = _SPLIT_SUFFIX_RE.search(k)
    if m:
        return SPLITS[m.group(1)], k[: m.start()]
    return None, k


def _infix(k: str) -> str | None:
    """``target_val_acc`` -> ``val/acc/target`` (``split/metric/part``); None without an infix split."""
    m = _SPLIT_INFIX_RE.search(k)
    if m is None:
        return None
    part, rest = k[: m.start()], k[m.end() :]
    canon = _canonical(rest.replace("/", "_").replace(".", "_"))
    metric = canon if canon is not None else _SEP_RE.sub("_", rest).strip("_")
    if not metric or not part:
        return None
    return f"{SPLITS[m.group(1)]}/{metric}/{_SEP_RE.sub('_', part).strip('_')}"


def _normalise(k: str) -> str:
    if k in _LR or k.startswith("lr-") or k.startswith("lr/"):
        return "optim/lr"
    m = _PG_LR_RE.match(k)
    if m:  # YOLOv5 "x/lr0", "x/lr1": one learning rate per parameter group
        return "optim/lr" if m.group(1) == "0" else f"optim/lr/pg{m.group(1)}"
    if k in ("grad_norm", "gradient_norm", "grad/norm", "grad_norm_total", "total_norm", "gnorm"):
        return "grad/norm/total"
    if k in ("loss_scale", "scaler_scale", "grad_scale"):
        return "optim/loss_scale"  # fp16 dynamic loss scale: halved at each overflow
    split, rest = split_of(k)
    canon = _canonical(rest.replace("/", "_").replace(".", "_"))
    if canon is None:
        canon = _canonical(rest) or _canonical(rest.replace("-", "_"))
    if canon == "lr" or rest in _LR:
        return "optim/lr"
    if canon is not None:
        return f"{split or _METRICS[canon]}/{canon}"
    if split is None:
        named = _infix(k)
        if named is not None:
            return named
    rest = _SEP_RE.sub("_", rest).strip("_") or rest
    if split is None and (rest.endswith("_loss") or rest.startswith("loss_")):
        split = "train"  # a part of the training loss (box_loss, nll_loss, loss_bbox)
    return f"{split}/{rest}" if split else rest


def kind_of(key: str) -> tuple[str | None, bool, int]:
    """``(signal name or None, is a fraction, SIGNAL | STEP | EPOCH | NOISE)`` of a logged key, cached."""
    got = _kinds.get(key)
    if got is not None:
        return got
    raw = key.strip().strip("'\"").lower()
    k = key_of(raw)
    split, rest = split_of(k)
    if k in ("loss_scale", "grad_scale"):
        got = ("optim/loss_scale", False, SIGNAL)
    elif k.startswith(("doctor/", "doctor_")):
        # Our own findings, logged into the run's logs by the framework callbacks (doctor/verdict,
        # doctor/finding/<check>): a verdict about the run, not a training value of it.
        got = (None, False, NOISE)
    elif k in _DROP_FIRST or " " in raw and raw.partition(" ")[2] in _DROP_FIRST:
        got = (None, False, NOISE)  # prose ("loss scale to: 0.25", "improved to 0.64"), not a key
    elif k in STEP_KEYS:
        got = (None, False, STEP)
    elif k in EPOCH_KEYS or rest in EPOCH_KEYS:
        got = (None, False, EPOCH)
    elif k in SPLITS or (split is not None and rest in SPLITS) or _NOISE.search(k) or _NOISE.search(rest):
        # a bare split word as a key ("Train: 0 [100/1251]", timm) is a progress counter
        got = (None, False, NOISE)
    else:
        name = signal_name(key)
        got = (name, bool(_FRACTION.search(name)), SIGNAL)
    if len(_kinds) < 10_000:
        _kinds[key] = got
    return got


def classify(key: str) -> tuple[str | None, bool, bool]:
    """``(signal name or None for axis/bookkeeping keys, is a fraction, is the step axis)``, cached."""
    name, frac, kind = kind_of(key)
    return name, frac, kind == STEP
