"""Numbers printed in free text: ``loss=0.3331``, ``Loss: 0.3331``, ``acc 89.93%``, tqdm postfixes,
Keras progress lines, dict lines, glog/Caffe, detectron2 and MMDetection console lines.

``parse_line`` is the one-line API (the ``run`` wrapper's printed-number parser uses it).
``read_text`` streams a whole log: it works on multi-megabyte chunks with one compiled regex, so
the per-line Python cost is paid only by lines that carry numbers.
"""

from __future__ import annotations

import re
from operator import itemgetter

import numpy as np

from muvo_doctor.logs.base import AddPoint, classify

# One "key <sep> number" pair. Written for speed (no IGNORECASE, possessive quantifiers), since the
# regex engine tries it at every character of a log: it is most of the reader's cost.
# key: a word starting with a letter, optionally a second word ("Train Loss", "Avg Score"), quotes
# allowed around it (dict lines); separator ":", "=" or blanks; a decimal, scientific, nan or inf
# number, optionally "%" or "/<total>", that must end there: not "02:05" (times), "1.2.3" (versions), "1,000", "2000M".
_KV = (
    # The pattern starts with a letter class so the engine can skip other characters quickly; the
    # lookbehind after it checks that the key starts a word.
    r"""(?P<k>[A-Za-z](?<![\w.\-/][A-Za-z])[\w./\-]*+(?:\ [A-Za-z]\w*+)?)['"]?"""
    r"(?:[ \t]*+[:=]|[ \t])[ \t]*+"
    # value; its decimals (f) and exponent (x) are captured so digits need no per-value Python
    r"(?P<v>(?=[-+]?\.?\d)[-+]?+\d*+(?:\.(?P<f>\d*+))?(?:[eE](?P<x>[-+]?\d++))?"
    r"|[-+]?(?:[nN]a[nN]|NAN|[iI]nf(?:inity)?|INF))"
    # "%", or a ratio "9832/10000" (its denominator d)
    r"""(?:(?P<p>%)|/(?P<d>\d++))?(?![\w.:'"]|,\d)"""
)
_KV_RE = re.compile(_KV)
# Two-word keys ("Train Loss", "Learning Rate", "Anomaly Score") are joined with "_", unless the
# first word is a log level or a filler word ("INFO step 200", "the loss 0.3"): then it is dropped.
_DROP_FIRST = frozenset(
    "info debug warning warn error critical trace the a an is at of on in to and for with by "
    "current final new saved".split()
)


def key_of(raw: str) -> str:
    """The key as printed, lowercased; of two words, joined by ``_`` (a log level or filler word is dropped)."""
    k = raw.lower()
    if " " in k:
        first, _, second = k.partition(" ")
        return second if first in _DROP_FIRST else f"{first}_{second}"
    return k


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
    line = _clean(line)
    out: list[tuple[str, float, int | None]] = []
    for k, v, _f, _x, p, den in _KV_RE.findall(line):
        val, d = _value(v, p)
        if den and den.strip("0") and d is not None and classify(k)[0] is not None:  # not "step 200/1000"
            val, d = val / int(den), max(len(den) - 1, 0)  # "Accuracy: 9832/10000" -> 0.9832
        out.append((key_of(k), val, d))
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
# Canonical metric -> its split when the key names none ("loss" is train/loss, "auroc" val/auroc).
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


def _normalise(k: str) -> str:
    if k in _LR or k.startswith("lr-") or k.startswith("lr/"):
        return "optim/lr"
    if k in ("grad_norm", "gradient_norm", "grad/norm", "grad_norm_total", "total_norm", "gnorm"):
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


# ---------------------------------------------------------------------------------------------
# The streaming reader.

# MMDetection/mmengine: "Epoch [1][50/7330]" or "Epoch(train) [1][  50/7330]": epoch, iteration, iterations per epoch.
_MMDET = r"Epoch(?:\(\w+\))?[ \t]*\[(\d+)\][ \t]*\[[ \t]*(\d+)[ \t]*/[ \t]*(\d+)\]"
_MMDET_RE = re.compile(_MMDET)
# Record boundaries: each newline is followed by a pair the key regex itself matches, so one
# findall over a chunk yields pairs and line ends in order.
_NL_KEY = "Zqnl"
_NL_MARK = "\n" + _NL_KEY + "=0 "
_CHUNK = 2 << 20  # bytes per read: bounds the match list (~70k tuples for dense logs)
_MAX_LINE = 1 << 20  # a "line" longer than this (no newline) is cut, so memory stays bounded
_TRACEBACK_B = b"Traceback (most recent call last)"
_NO_KIND = (None, False, False)
# Distinct signals kept per log: a log that prints a new key on every line ("sample_123 0.5")
# must not grow the history without bound.
_MAX_SIGNALS = 1000
_COLUMNS = tuple(itemgetter(i) for i in range(6))


# Colour codes (loguru, rich, Keras on a terminal) and value wrappers printed around numbers:
# "loss: tensor(0.5123, device='cuda:0')", "loss: np.float32(0.5123)" (NumPy 2 repr).
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_WRAP_RE = re.compile(r"\b(?:tensor|np\.float(?:16|32|64)|np\.int(?:32|64)|array)\(\[?")


def _clean(text: str) -> str:
    """Windows line ends, colour codes and tensor/NumPy wrappers out; each step only when present."""
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    if "\x1b" in text:
        text = _ANSI_RE.sub("", text)
    if "tensor(" in text or "np." in text or "array(" in text:
        text = _WRAP_RE.sub("", text)
    return text


# A line that starts with a split word ("Test set: Average loss: 0.0520, Accuracy: 9832/10000",
# "Validation: loss 0.41"): its keys without a split of their own belong to that split.
_SPLIT_LINE_RE = re.compile(
    r"\n[ \t>|*\-\[\]]*+([Tt]est(?:ing)?|TEST|[Vv]al(?:id(?:ation)?)?|VAL(?:ID(?:ATION)?)?|[Ee]val(?:uation)?|EVAL)"
    r"\b[^\n]*"
)


def _with_split(m: re.Match[str], split: str) -> str:
    first = key_of(m.group("k")).partition("_")[0]
    return m.group(0) if first in _SPLITS else f"{split}_{m.group(0)}"


def _split_line(m: re.Match[str]) -> str:
    split = "test" if m.group(1)[0] in "Tt" else "val"
    return _KV_RE.sub(lambda k: _with_split(k, split), m.group(0))


def _mmdet_step(m: re.Match[str]) -> str:
    e, i, n = int(m.group(1)), int(m.group(2)), int(m.group(3))
    return f"step={(e - 1) * n + i} "


def _drop_rewrites(text: str) -> str:
    """What a terminal shows of carriage-return rewrites: per line the last non-blank segment,
    plus each completed tqdm bar (``100%|``) that a later, different bar overwrote."""
    out = []
    for line in text.split("\n"):
        if "\r" not in line:
            out.append(line)
            continue
        segs = line.split("\r")
        if "100%|" in line:  # per-segment work only for lines that complete a bar
            segs = [s for s in segs if s.strip()]
            for a, b in zip(segs, segs[1:], strict=False):
                # tqdm's close() prints the final bar twice: keep a completed bar only before a new bar.
                if "100%|" in a and "100%|" not in b:
                    out.append(a)
            if segs:
                out.append(segs[-1])
            continue
        for seg in reversed(segs):
            if seg.strip():
                out.append(seg)
                break
    return "\n".join(out)


class TextStats:
    """What a text read saw: records with numbers, points added, rewrites dropped, the largest step."""

    __slots__ = ("records", "points", "rewrites", "last_step", "lines", "traceback", "bytes", "last_explicit")

    def __init__(self) -> None:
        self.records = 0
        self.points = 0
        self.rewrites = 0
        self.last_step = -1
        self.lines = 0
        self.traceback = False
        self.bytes = 0
        self.last_explicit = -1  # the last step printed on a line (step/iter/Iteration), -1 before any


class _Kinds:
    """Per-read cache: raw key -> (signal id or -1, is a fraction, is the step axis), and the names."""

    def __init__(self) -> None:
        self.code: dict[str, int] = {}
        self.sig: list[int] = []  # code -> signal id, -1 for axis/bookkeeping keys
        self.frac: list[bool] = []
        self.step: list[bool] = []
        self.names: list[str] = []
        self.name_id: dict[str, int] = {}

    def add(self, key: str) -> None:
        name, frac, step = _NO_KIND if key == _NL_KEY else classify(key)
        self.code[key] = len(self.sig)
        nid = -1 if name is None else self.name_id.get(name, -1)
        if name is not None and nid < 0 and len(self.names) < _MAX_SIGNALS:
            nid = self.name_id[name] = len(self.names)
            self.names.append(name)
        self.sig.append(nid)
        self.frac.append(frac)
        self.step.append(step)


def _pairs_to_points(
    pairs: list[tuple[str, str, str, str, str, str]], kinds: _Kinds, st: TextStats, add: AddPoint
) -> None:
    """Turn one chunk's (key, value, decimals, exponent, %, denominator) tuples into points, vectorised.

    Lines are delimited by the newline marks; a line's step is the step printed on it, else the
    last printed step, else the record index (lines that carry a signal, counted from the start).
    """
    # Columns via itemgetter maps: zip(*pairs) over a million tuples costs ten times more.
    ks, vs, fs, xs, ps, ds = (list(map(g, pairs)) for g in _COLUMNS)
    n = len(ks)
    for k in dict.fromkeys(ks):  # first-appearance order, so the signal cap keeps the earliest keys
        if k not in kinds.code:
            kinds.add(k)
    code = np.fromiter(map(kinds.code.__getitem__, ks), np.int64, n)
    vals = np.fromiter(map(float, vs), np.float64, n)
    nl_code = kinds.code.get(_NL_KEY, -1)
    line = np.cumsum(code == nl_code)  # line id within the chunk (0 before the first newline mark)
    nlines = int(line[-1]) + 1
    sig = np.asarray(kinds.sig, np.int64)[code]
    is_sig = sig >= 0
    finite = np.isfinite(vals)
    decimals = np.fromiter(map(len, fs), np.int64, n)
    is_step = np.asarray(kinds.step, bool)[code] & finite & (vals >= 0) & (vals == np.floor(vals))
    is_step &= decimals == 0
    # Step per line: printed on it, else carried forward from the last line that printed one.
    printed = np.full(nlines, -1, np.int64)
    printed[line[is_step]] = vals[is_step].astype(np.int64)
    has_sig = np.zeros(nlines, bool)
    has_sig[line[is_sig]] = True
    last = np.where(printed >= 0, np.arange(nlines), -1)
    np.maximum.accumulate(last, out=last)
    carried = np.where(last >= 0, printed[np.maximum(last, 0)], st.last_explicit)
    rec = st.records + np.cumsum(has_sig) - 1
    step_of_line = np.where(carried >= 0, carried, rec)
    if (printed >= 0).any():
        st.last_explicit = int(printed[printed >= 0][-1])
    nrec = int(has_sig.sum())
    if not nrec:
        return
    st.records += nrec
    st.last_step = max(st.last_step, int(step_of_line[has_sig].max()))
    idx = np.flatnonzero(is_sig)
    st.points += len(idx)
    steps = step_of_line[line[idx]]
    v = vals[idx]
    # Digits shown: decimals minus exponent ("5e-05" shows 5); nan/inf show none.
    dig = decimals[idx]
    if xs.count("") != n:
        exp_of = {x: int(x) if x else 0 for x in set(xs)}  # few distinct exponents: map, not a loop
        exps = np.fromiter(map(exp_of.__getitem__, xs), np.int64, n)
        dig = np.maximum(dig - exps[idx], 0)
    pct = np.fromiter(map("%".__eq__, ps), bool, n)[idx] if "%" in ps else np.zeros(len(idx), bool)
    s_ = sig[idx]
    frac_sig = np.asarray(kinds.frac, bool)[code[idx]]
    # Accuracy-like values printed 0..100 without "%" are percentages too (MMDetection "acc: 90.0").
    pct |= frac_sig & (v > 1.0) & (v <= 100.0)
    if pct.any():
        dig[pct] += 2
        for d in np.unique(dig[pct]):
            m = pct & (dig == d)
            v[m] = np.round(v[m] / 100.0, int(d))  # 89.93% is 0.8993, not 0.8993000000000001
    if ds.count("") != n:
        # A ratio "9832/10000" is the fraction 0.9832, shown to about 1/10000.
        den_of = {x: int(x) if x else 0 for x in set(ds)}
        den = np.fromiter(map(den_of.__getitem__, ds), np.int64, n)[idx]
        r = den > 0
        v[r] = v[r] / den[r]
        dig[r] = np.maximum(np.fromiter(map(len, ds), np.int64, n)[idx][r] - 1, 0)
    ok = np.isfinite(v)
    for nid in np.unique(s_):
        sel = np.flatnonzero(s_ == nid)
        name = kinds.names[nid]
        good = ok[sel]
        d = int(dig[sel][good].min()) if good.any() else None
        ss, vv = steps[sel].tolist(), v[sel].tolist()
        add(name, ss[0], vv[0], d)  # History keeps the fewest digits: once per chunk is enough
        for a, b in zip(ss[1:], vv[1:], strict=True):
            add(name, a, b, None)


def read_text(path: str, add: AddPoint, *, keep_rewrites: bool = False) -> TextStats:
    """Stream a console log into ``add(name, step, value, digits)``.

    Each line that prints at least one known number is a record. Its step is the ``step``/``iter``/
    ``Iteration`` number printed on it (MMDetection's ``Epoch [e][i/n]`` counts as ``(e-1)*n+i``),
    else the last such step, else the record index. Carriage-return rewrites (tqdm) keep only what
    a terminal shows at the end of each line plus each completed bar, unless ``keep_rewrites``.

    Args:
        path: the log file.
        add: the sink, usually ``History.add_point``.
        keep_rewrites: keep every ``\\r`` rewrite (used when a log is one long progress bar).

    Returns:
        Counters of what was read.
    """
    st = TextStats()
    kinds = _Kinds()
    findall = _KV_RE.findall

    def process(raw: bytes) -> None:
        # Every "is it there?" test runs on the bytes: a search in bytes is several times faster
        # than in a str holding non-ASCII text (tqdm's block characters make it 2 bytes a char).
        if not st.points and not st.traceback and _TRACEBACK_B in raw:
            st.traceback = True  # only matters for the "no records" reason
        rewrites = raw.count(b"\r")
        if rewrites:
            i = raw.find(b"\r")
            if raw[i + 1 : i + 2] == b"\n" and raw.count(b"\r\n") == rewrites:  # Windows line ends
                raw = raw.replace(b"\r\n", b"\n")
                rewrites = 0
        st.lines += raw.count(b"\n")
        text = raw.decode("utf-8", errors="replace")
        if b"\x1b" in raw:
            text = _ANSI_RE.sub("", text)
        if b"(" in raw and (b"tensor(" in raw or b"np." in raw or b"array(" in raw):
            text = _WRAP_RE.sub("", text)
        if rewrites:
            st.rewrites += rewrites
            text = text.replace("\r", "\n") if keep_rewrites else _drop_rewrites(text)
        if b"Epoch" in raw:
            text = _MMDET_RE.sub(_mmdet_step, text)
        text = "\n" + text  # so the chunk's first line can be a split line too
        if _SPLIT_LINE_RE.search(text):  # cheap: the pattern starts with a newline
            text = _SPLIT_LINE_RE.sub(_split_line, text)
        text = text[1:]
        pairs = findall(text.replace("\n", _NL_MARK))
        if pairs:
            _pairs_to_points(pairs, kinds, st, add)

    with open(path, "rb") as f:
        carry = b""
        while True:
            raw = f.read(_CHUNK)
            st.bytes += len(raw)
            if not raw:
                if carry:
                    process(carry + b"\n")
                break
            buf = carry + raw if carry else raw
            cut = buf.rfind(b"\n")
            if cut < 0 and len(buf) > _MAX_LINE:
                # No newline for a megabyte: cut at a rewrite or a space so a number is rarely split.
                cut = max(buf.rfind(b"\r"), buf.rfind(b" "))
                if cut < 0:
                    cut = len(buf) - 1
            if cut < 0:
                carry = buf
                continue
            process(buf[: cut + 1])
            carry = buf[cut + 1 :]
    return st
