"""Numbers printed in free text: ``loss=0.3331``, ``Loss: 0.3331``, ``acc 89.93%``, tqdm postfixes,
Keras progress lines, dict lines, glog/Caffe, detectron2 and MMDetection console lines.

``parse_line`` is the one-line API (the ``run`` wrapper's printed-number parser uses it).
``read_text`` streams a whole log: it works on multi-megabyte chunks with one compiled regex, so
the per-line Python cost is paid only by lines that carry numbers.
"""

from __future__ import annotations

import re

# A printed number: decimal, scientific, nan/inf. Integers count as 0 digits.
_NUM = r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|nan|inf(?:inity)?)"
# A key: one word (letters first, then word chars . / -), optionally preceded by a split or
# aggregate word and a space ("Train Loss", "Avg Score"); quotes allowed around it (dict lines).
_KEY = (
    r"(?:(?:train|training|val|valid|validation|eval|test|avg|average|mean|total|running)[ _])?"
    r"[A-Za-z](?:[\w./\-]*\w)?"
)
_KV = (
    r"(?<![\w.\-/])['\"]?(?P<k>" + _KEY + r")['\"]?"
    r"(?:[ \t]*[:=][ \t]*|[ \t]+)"
    r"(?P<v>" + _NUM + r")(?P<p>%)?"
    # The number must end here: not "02:05" (times), "1.2.3" (versions), "1,000", "2000M".
    r"(?![\w.:]|,\d)"
)
_KV_RE = re.compile(_KV, re.IGNORECASE)


def _digits(num: str) -> int | None:
    """Decimal places a printed number shows; ``5e-05`` shows 5, ``0.3331`` shows 4, nan/inf None."""
    s = num.lstrip("+-").lower()
    if s[:1] in ("n", "i"):
        return None
    mant, _, exp = s.partition("e")
    dot = mant.find(".")
    d = len(mant) - dot - 1 if dot >= 0 else 0
    if exp:
        d -= int(exp)
    return max(d, 0)


def _value(num: str, pct: str) -> tuple[float, int | None]:
    v = float(num)
    d = _digits(num)
    if pct:
        d = None if d is None else d + 2
        # round() so 89.93% is 0.8993, not 0.8993000000000001
        v = v / 100.0 if d is None else round(v / 100.0, d)
    return v, d


def parse_line(line: str) -> list[tuple[str, float, int | None]]:
    """Every ``key <sep> number`` pair printed on one line.

    Args:
        line: one line of program output (no trailing newline needed).

    Returns:
        ``(key as printed, lowercased; value; decimal digits shown)`` per pair, in order.
        Percentages become fractions with two more digits: ``acc 89.93%`` -> ``("acc", 0.8993, 4)``.
        ``nan``/``inf`` give a digits of None.
    """
    if not line:
        return []
    out: list[tuple[str, float, int | None]] = []
    for m in _KV_RE.finditer(line):
        v, d = _value(m.group("v"), m.group("p"))
        out.append((m.group("k").lower(), v, d))
    return out


# ---------------------------------------------------------------------------------------------
# Signal names (PREAMBLE "Shared contracts").

_SPLITS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "eval": "val",
    "dev": "val",
    "test": "test",
}
# Canonical metric -> default split (None: no split, e.g. optim/lr).
_METRICS = {
    "loss": "train",
    "acc": "train",
    "auroc": "val",
    "auprc": "val",
    "fpr95": "val",
    "map": "val",
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
    "bbox_map": "map",
    "map50-95(b)": "map",
}
_LR = {"lr", "learning_rate", "learningrate", "lr/pg0", "lr_pg0", "lr-adam", "lr-sgd", "lr-adamw"}
_MODIFIERS = ("avg_", "average_", "mean_", "running_", "epoch_", "batch_", "total_")
_SEP_RE = re.compile(r"[\s_/:]+")
_name_cache: dict[str, str] = {}


def signal_name(key: str) -> str:
    """Normalise a logged key to a signal name.

    ``loss`` -> ``train/loss``, ``val_loss``/``eval_loss`` -> ``val/loss``, ``accuracy``/``acc`` ->
    ``train/acc``, ``val_accuracy`` -> ``val/acc``, ``lr``/``learning_rate`` -> ``optim/lr``,
    ``auroc``/``auc`` -> ``val/auroc``, ``grad_norm`` -> ``grad/norm/total``. Unknown keys keep
    their normalised name (lowercase, ``/`` between a split word and the rest): ``avg_score`` ->
    ``avg_score``, ``val_f1`` -> ``val/f1``.
    """
    cached = _name_cache.get(key)
    if cached is not None:
        return cached
    k = key.strip().strip("'\"").lower()
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


def _normalise(k: str) -> str:
    if k in _LR or k.startswith("lr-") or k.startswith("lr/"):
        return "optim/lr"
    if k in ("grad_norm", "gradient_norm", "grad/norm", "grad_norm_total", "total_norm"):
        return "grad/norm/total"
    split: str | None = None
    rest = k
    m = re.match(r"(train|training|val|valid|validation|eval|dev|test)[_/.\-]", k)
    if m:
        split = _SPLITS[m.group(1)]
        rest = k[m.end() :]
    else:
        m = re.search(r"[_/.\-](train|training|val|valid|validation|eval|dev|test)$", k)
        if m:
            split = _SPLITS[m.group(1)]
            rest = k[: m.start()]
    canon = _canonical(rest.replace("/", "_").replace(".", "_"))
    if canon is None:
        canon = _canonical(rest)
    if canon == "lr" or rest in _LR:
        return "optim/lr"
    if canon is not None:
        return f"{split or _METRICS[canon]}/{canon}"
    rest = _SEP_RE.sub("_", rest).strip("_") or rest
    return f"{split}/{rest}" if split else rest
