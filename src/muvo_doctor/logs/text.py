"""The one reader of printed training text, for ``run`` (the child's output, line by line) and
``audit`` (files, in chunks): the same text gives the same series either way.

What it reads: ``loss=0.3331``, ``Loss: 0.3331``, ``acc 89.93%``, ``Accuracy: 9832/10000``, tqdm and
Lightning postfixes, Keras progress lines, Python-dict lines (``{'loss': '0.32'}``, transformers),
glog/Caffe, Darknet, fairseq, detectron2 and MMDetection console lines, Markdown/ASCII tables and
whitespace tables whose header row names the columns (Ultralytics).

Rules, each in one place:
- split: a key's own split word (``val_loss``, ``test acc``), else the split word the line prints
  before its first signal (``Test set: Average loss: 2.31`` -> ``test/loss``), else the metric's
  default (``loss`` is ``train/loss``); names come from ``names.signal_name``.
- step: the step printed on the line (``step``/``iter``/``Iteration``/``num_updates``, MMDetection's
  ``Epoch [e][i/n]``, a progress counter, tqdm's ``| i/n [`` or ``[6400/60000 (11%)]``, counted
  across the epochs printed), else the last such step; in a log that never printed one, the epoch
  printed (``Epoch 3/10``) while each epoch holds one record, counted records after an epoch that
  holds several; else the record index (a record: a line that holds a signal).
- digits: the decimals each value was printed with (``5e-05`` shows 5); a percentage becomes a
  fraction with two more digits, a ratio ``980/10000`` a fraction shown to 1/10000.

A line whose step cannot be a step (``step 1e30``) or a number that overflows (400 digits) is
skipped and counted, never fatal. ``TextParser`` holds the state across chunks or line batches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from muvo_doctor.core.names import EPOCH, NOISE, SIGNAL, SPLITS, STEP, key_of, kind_of, signal_name
from muvo_doctor.logs.base import AddPoint, Sink, as_sink

__all__ = [
    "TextParser",
    "TextStats",
    "key_of",
    "parse_line",
    "read_text",
    "signal_name",
    "strip_ansi",
]

# One "key <sep> number" pair. Written for speed (no IGNORECASE, possessive quantifiers), since the
# regex engine tries it at every character of a log: it is most of the reader's cost.
# key: a word starting with a letter, optionally a second word ("Train Loss", "Avg Score"), quotes
# allowed around it and around the value (dict lines, transformers 5 prints strings); separator
# ":", "=" or blanks; a decimal, scientific, nan or inf number, optionally "%" or "/<total>", that
# must end there: not "02:05" (times), "1.2.3" (versions), "1,000", "2000M", "1.71 GiB" (sizes).
_KV = (
    # The pattern starts with a letter class so the engine can skip other characters quickly; the
    # lookbehind after it checks that the key starts a word.
    r"""(?P<k>[A-Za-z](?<![\w.\-/][A-Za-z])[\w./\-]*+(?:\ [A-Za-z]\w*+)?)['"]?"""
    r"""(?:[ \t]*+[:=]|[ \t])[ \t]*+['"]?"""
    # value; its decimals (f) and exponent (x) are captured so digits need no per-value Python
    r"(?P<v>(?=[-+]?\.?\d)[-+]?+\d*+(?:\.(?P<f>\d*+))?(?:[eE](?P<x>[-+]?\d++))?"
    # nan/inf, possibly padded by a format's fill character ("{:x<6f}" prints "nanxxx", PaddleOCR)
    r"|[-+]?(?:[nN]a[nN]|NAN|[iI]nf(?:inity)?|INF)x*+)"
    # "%", or a ratio "9832/10000" (its denominator d)
    r"""(?:(?P<p>%)|/(?P<d>\d++))?['"]?(?![\w.'"]|[:,]\d)"""
    # not a size or a count of things ("1.71 GiB", "22 iterations"); the first-letter test keeps it cheap
    r"(?![ \t]?(?=[KMGTkbisetfpc])(?:[KMGT]i?B|[kMG]?bytes|iterations|iters|images|samples|seconds|examples"
    r"|tokens|epochs|steps|batches|files|params|parameters|classes)\b)"
)
_KV_RE = re.compile(_KV)
_MAX_STEP = 1 << 53  # a step at or above this is not a step (1e30, 2**63): the line is skipped

# Record boundaries: each newline is followed by a pair the key regex itself matches, so one
# findall over a chunk yields pairs and line ends in order. Another pseudo key carries a progress
# counter ("| 67/704 [" becomes "| Zqctr=67/704 [").
_NL_KEY = "Zqnl"
_NL_MARK = "\n" + _NL_KEY + "=0 "
_CTR_KEY = "Zqctr"
# tqdm's "{bar}| {n}/{total} [": batches done. (Keras' "1875/1875 [====" is not used: it counts
# batches or samples depending on the version; its "Epoch 3/30" is the unambiguous axis.)
# Also "[6400/60000 (11%)]" (PyTorch examples, timm): samples or batches done in the epoch.
# One pattern per delimiter, each starting with it (a cheap first-character test, unlike a
# lookbehind), so the mark is a literal replacement (a function or a template runs Python per match).
_COUNTER_RES = tuple(
    (re.compile(rf"\{d}[ \t]*(?=\d+/\d+(?=[ \t]*[(\]]| \[))"), f"{d} {_CTR_KEY}=") for d in "|["
)
# pytorch/examples word_language_model: "| epoch   3 |   200/ 2983 batches | lr 20.00 | ...": the batch
# counter of the epoch, a space after the slash and the word "batches" (which would mark it a count).
_BATCHES_RE = re.compile(r"\|[ \t]*(\d+)/[ \t]*(\d+)[ \t]+batches\b")
_BATCHES_MARK = rf"| {_CTR_KEY}=\1/\2"
# timm prints the epoch as "Train: 3 [ 100/1251 ( 8%)]"
_TIMM_EPOCH_RE = re.compile(r"\b(?:Train|TRAIN):[ \t]*(\d+)(?=[ \t]*\[)")
_NEWLINE, _COUNTER = 4, 5  # axis kinds next to names.SIGNAL/STEP/EPOCH/NOISE
_CHUNK = 2 << 20  # bytes per read: bounds the match list (~70k tuples for dense logs)
_MAX_LINE = 1 << 20  # a "line" longer than this (no newline) is cut, so memory stays bounded
_TRACEBACK_B = b"Traceback (most recent call last)"
# Distinct signals kept per log: a log that prints a new key on every line ("sample_123 0.5")
# must not grow the history without bound.
_MAX_SIGNALS = 1000

# CSI / OSC escape sequences and lone escapes: colours and cursor moves are not part of a number.
ANSI_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
# Value wrappers printed around numbers: "loss: tensor(0.5123, device='cuda:0')", "np.float32(0.5)".
_WRAP_RE = re.compile(r"\b(?:tensor|np\.float(?:16|32|64)|np\.int(?:32|64)|array)\(\[?")
# Exception and traceback lines hold sizes, line numbers and ids, never training numbers.
_ERROR_LINE_RE = re.compile(r"^[^\n]*?\b[A-Z]\w*(?:Error|Exception)\b[^\n]*", re.MULTILINE)
_URL_RE = re.compile(r"\b[a-zA-Z][\w+.\-]*://[^\s\"'<>]*")
# MMDetection/mmengine: "Epoch [1][50/7330]" or "Epoch(train) [1][  50/7330]": epoch, iteration, iterations per epoch.
_MMDET_RE = re.compile(r"Epoch(?:\(\w+\))?[ \t]*\[(\d+)\][ \t]*\[[ \t]*(\d+)[ \t]*/[ \t]*(\d+)\]")
# Darknet: "40245, 4.021: 6.907692, 6.910023 avg, 0.081346 rate, ..." (classifier: batch, epoch) and
# "1000: 6.9, 6.9 avg loss, 0.001 rate, ..." (detector): batch, loss, its running mean, learning rate.
_NUM = r"[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan|inf|-nan)"
_DARKNET_RE = re.compile(
    rf"^[ \t]*(\d+)(?:,[ \t]*{_NUM})?:[ \t]*({_NUM}),[ \t]*({_NUM}) avg(?: loss)?,[ \t]*({_NUM}) rate[^\n]*",
    re.MULTILINE,
)
# fp16 overflow messages: fairseq "setting loss scale to: 0.25", apex "reducing loss scale to 16384.0"
_LOSS_SCALE_RE = re.compile(r"\bloss scale to:?[ \t]*([-+]?\d+\.?\d*(?:e[-+]?\d+)?)\b")
# A split word printed on a line (not part of a key: "valid_loss" has its own split).
_SPLIT_WORD_RE = re.compile(
    r"(?<![\w/.\-])(?:[Tt]est(?:ing)?|TEST(?:ING)?|[Vv]al(?:id(?:ation)?)?|VAL(?:ID(?:ATION)?)?"
    r"|[Ee]val(?:uation)?|EVAL)(?![\w/.\-])"
)
# Finding those words fast: literal-prefixed patterns over the lowercased bytes (a regex that
# starts with an alternation is tried at every character: ~170 ms per 2 MB).
_SPLIT_FINDERS = (
    re.compile(rb"test(?:ing)?(?![\w/.\-])"),
    re.compile(rb"val(?:id(?:ation)?)?(?![\w/.\-])"),
    re.compile(rb"eval(?:uation)?(?![\w/.\-])"),
)
_WORDISH = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_/.-")
# Tables. A header row names the columns; the rows under it hold one number per column.
_PIPE_ROW_RE = re.compile(r"^[ \t]*\|[^\n]*\|[ \t]*$", re.MULTILINE)
_PIPE_START_RE = re.compile(rb"\n[ \t]*\|")
_RULE_CELL_RE = re.compile(r"^:?-{2,}:?$|^=+$")
# Titles, then nothing or a progress bar (Ultralytics prints its validation header with one).
# Anchored on "\n" (a literal the engine skips to) with possessive quantifiers: it runs on every
# chunk, so it must fail fast on ordinary lines.
_HEADER_RE = re.compile(
    r"\n[ \t]*+([A-Za-z][\w()@.\-%/]*+(?:[ \t]++[A-Za-z][\w()@.\-%/]*+){2,}+[ \t]*+(?::[ \t][^\n]*%\|[^\n]*)?)(?=\n)"
)
_NAN_RE = re.compile(r"^(?:nan|inf|infinity)$", re.IGNORECASE)
_CELL_NUM_RE = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(%|/\d+|[KMG])?$")
# Table column titles that are not keys by themselves.
_COLUMN_ALIASES = {"p": "precision", "r": "recall", "box(p": "precision", "mask(p": "mask_precision"}


def strip_ansi(text: str) -> str:
    """Colour codes, cursor moves and OSC titles out of printed text."""
    return ANSI_RE.sub("", text) if "\x1b" in text else text


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


def parse_line(line: str) -> list[tuple[str, float, int | None]]:
    """Every ``key <sep> number`` pair printed on one line that is not bookkeeping (time, memory,
    ids), as printed (no split or step logic).

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
        if kind_of(k)[2] == NOISE:
            continue  # bookkeeping: "device='cuda:0'", "time 12", "v_num=3"
        val, d = _float(v), _digits(v)
        if p:
            d = None if d is None else d + 2
            val = val / 100.0 if d is None else round(val / 100.0, d)
        if den and den.strip("0") and d is not None and kind_of(k)[2] == SIGNAL:  # not "step 200/1000"
            val, d = val / int(den), max(len(den) - 1, 0)  # "Accuracy: 9832/10000" -> 0.9832
        out.append((key_of(k), val, d))
    return out


def _clean(text: str) -> str:
    """Windows line ends, colour codes and tensor/NumPy wrappers out; each step only when present."""
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    text = strip_ansi(text)
    if "tensor(" in text or "np." in text or "array(" in text:
        text = _WRAP_RE.sub("", text)
    return text


_ASCII_BLANKS = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"  # what str.strip() strips of ASCII
_PRINTABLE_RE = re.compile(rb"[!-~]")


def _drop_rewrites(raw: bytes) -> bytes:
    """What a terminal shows of carriage-return rewrites: per line the last non-blank segment,
    plus each completed tqdm bar (``100%|``) that a later, different bar overwrote (each its own
    line); a line of blank segments only is gone. ``raw`` starts with a newline.

    On bytes, before decoding: a tqdm log is mostly overwritten bars, and only what is kept is
    decoded and parsed. Lines without a rewrite are copied in slices, never split.
    """
    out: list[bytes] = []
    pos = 0  # the start of the text not yet copied: 0 or the newline that ends a rewritten line
    find, rfind = raw.find, raw.rfind
    while True:
        cr = find(b"\r", pos)
        if cr < 0:
            out.append(raw[pos:])
            return b"".join(out)
        start = rfind(b"\n", pos, cr) + 1  # >= 1: raw starts with a newline
        end = find(b"\n", cr)
        if end < 0:
            end = len(raw)
        kept = _shown(raw[start:end])
        if kept is None:
            out.append(raw[pos : start - 1])  # the line goes, with the newline before it
        else:
            out.append(raw[pos:start])
            out.append(kept)
        pos = end


def _blank(seg: bytes) -> bool:
    """Whether str.strip() of the decoded segment is empty (it also strips \\x1c-\\x1f and Unicode
    blanks); decoded only when no printable ASCII character settles it (tqdm's bars have one)."""
    rest = seg.strip(_ASCII_BLANKS)
    if not rest or _PRINTABLE_RE.search(rest):
        return not rest
    return not rest.decode("utf-8", "replace").strip()


def _shown(line: bytes) -> bytes | None:
    """The kept segments of one line holding rewrites, joined by newlines; None when all are blank."""
    if b"100%|" in line:  # per-segment work only for lines that complete a bar
        segs = [s for s in line.split(b"\r") if not _blank(s)]
        if not segs:
            return None
        # tqdm's close() prints the final bar twice: keep a completed bar only before a new bar.
        done = [a for a, b in zip(segs, segs[1:], strict=False) if b"100%|" in a and b"100%|" not in b]
        return b"\n".join([*done, segs[-1]])
    end = len(line)
    while end >= 0:
        cr = line.rfind(b"\r", 0, end)
        seg = line[cr + 1 : end]
        if not _blank(seg):
            return seg
        end = cr
    return None


def _mmdet_step(m: re.Match[str]) -> str:
    e, i, n = int(m.group(1)), int(m.group(2)), int(m.group(3))
    return f"step={(e - 1) * n + i} "


def _darknet(m: re.Match[str]) -> str:
    return f"step={m.group(1)} loss={m.group(2)} loss_avg={m.group(3)} lr={m.group(4)}"


def _prefixed(m: re.Match[str], split: str) -> str:
    """One key/value match with ``split`` put in front of a key that names no split itself."""
    if kind_of(m.group("k"))[2] != SIGNAL:
        return m.group(0)
    key = key_of(m.group("k"))
    if key.partition("_")[0] in SPLITS:
        return m.group(0)
    return f"{split}_{key}{m.group(0)[m.end('k') - m.start() :]}"


def _split_of_line(line: str) -> tuple[str | None, int]:
    """The split a line names before its first signal pair, and where that pair starts."""
    first = None
    for m in _KV_RE.finditer(line):
        if kind_of(m.group("k"))[2] == SIGNAL:
            first = m
            break
    if first is None:
        return None, 0
    w = _SPLIT_WORD_RE.search(line)
    if w is None or w.start() > first.start("k"):
        return None, 0
    word = w.group(0).lower()
    return ("test" if word.startswith("test") else "val"), first.start()


def _pipe_lines(probe: bytes) -> bool:
    """Some line starts with "|" (a table row, or fairseq's "| epoch 001 | ..."); tqdm's mid-line
    bars do not count. Substring tests only: this runs on every chunk that holds a "|"."""
    return probe.lstrip(b" \t")[:1] == b"|" or _PIPE_START_RE.search(probe) is not None


def _row_tokens(line: str) -> list[str]:
    """A table row's cells: the text before a progress bar (": 100%|...") split at blanks."""
    return (line.split(": ", 1)[0] if ": " in line else line).split()


def _row_fits(line: str, n: int) -> bool:
    toks = _row_tokens(line)
    return len(toks) == n and all(_CELL_NUM_RE.match(t) for t in toks[1:])


def _next_line(text: str, pos: int) -> str | None:
    """The next non-blank line after ``pos`` (the end of a line), or None at the end of the batch."""
    while pos < len(text):
        end = text.find("\n", pos + 1)
        if end < 0:
            return None
        line = text[pos + 1 : end]
        if line.strip():
            return line
        pos = end
    return None


def _cell_key(title: str) -> str:
    t = title.strip().strip(":").strip()
    if t.endswith(")") and "(" not in t:  # "mAP50-95):" closes Ultralytics' "Box(P ... mAP50-95)"
        t = t[:-1]
    low = t.lower().rstrip(")") if t.lower().startswith(("box(", "mask(")) else t.lower()
    return _COLUMN_ALIASES.get(low, low).replace(" ", "_")


class TextStats:
    """What a text read saw: records with numbers, points added, rewrites dropped, the largest step,
    and the records skipped as impossible (with the first reason)."""

    __slots__ = (
        "records",
        "points",
        "rewrites",
        "last_step",
        "lines",
        "traceback",
        "bytes",
        "last_explicit",
        "skipped",
        "first_reason",
    )

    def __init__(self) -> None:
        self.records = 0
        self.points = 0
        self.rewrites = 0
        self.last_step = -1
        self.lines = 0  # counted while no point was found
        self.traceback = False
        self.bytes = 0
        self.last_explicit = -1  # the last step printed on a line (step/iter/Iteration), -1 before any
        self.skipped = 0
        self.first_reason = ""

    def skip(self, n: int, reason: str) -> None:
        if n > 0:
            self.skipped += n
            if not self.first_reason:
                self.first_reason = reason


class _Kinds:
    """Per-read cache: raw key -> (signal id or -1, is a fraction, axis kind), and the names."""

    def __init__(self) -> None:
        self.code: dict[str, int] = {}
        self.sig: list[int] = []  # code -> signal id, -1 for axis/bookkeeping keys
        self.frac: list[bool] = []
        self.axis: list[int] = []
        self.keys: list[str] = []  # code -> the key as printed, lowercased (for printed/<key>)
        self.names: list[str] = []
        self.name_id: dict[str, int] = {}

    def add(self, key: str) -> None:
        if key == _NL_KEY:
            name, frac, axis = None, False, _NEWLINE
        elif key == _CTR_KEY:
            name, frac, axis = None, False, _COUNTER
        else:
            name, frac, axis = kind_of(key)
        self.code[key] = len(self.sig)
        nid = -1 if name is None else self.name_id.get(name, -1)
        if name is not None and nid < 0 and len(self.names) < _MAX_SIGNALS:
            nid = self.name_id[name] = len(self.names)
            self.names.append(name)
        self.sig.append(nid)
        self.frac.append(frac)
        self.axis.append(axis)
        self.keys.append(key_of(key.strip("'\"")).replace(" ", "_"))


@dataclass
class Points:
    """One batch of points, in order: signal name, the key as printed, step, value, digits, and
    whether the step was printed on the record's own line (else carried or counted)."""

    names: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    digits: list[int | None] = field(default_factory=list)
    own_step: list[bool] = field(default_factory=list)


class TextParser:
    """The stateful reader of printed text: feed it complete lines (a chunk of a file, or a batch of
    a child's output lines) and it adds points. State carried across feeds: the last printed step
    and epoch, the open table header, the record count, the signal names.

    Args:
        keep_rewrites: keep every carriage-return rewrite as a line (``run`` sees each rewrite as a
            line; ``audit`` keeps by default what a terminal shows at the end).
    """

    def __init__(self, *, keep_rewrites: bool = False) -> None:
        self.keep_rewrites = keep_rewrites
        self.st = TextStats()
        self.kinds = _Kinds()
        self.epoch = -1  # the last epoch printed
        self.epoch_base = -1  # the first epoch printed (0 or 1): counters count from it
        self.pipe_cols: list[str] = []  # the open Markdown/ASCII table's column keys
        self.pipe_groups: list[str] = []  # split words of a group-header row above it
        self.ws_cols: list[str] = []  # the open whitespace table's column keys
        # records of a log that prints epochs but no steps (see _epoch_steps)
        self.ep_key = -1  # the epoch of the current record
        self.ep_seen: set[int] = set()  # its signals
        self.ep_step = -1  # its step
        self.ep_counting = False  # an epoch held several records: steps count records

    # -- text -> "key=value" text -----------------------------------------------------------------
    def decoded(self, raw: bytes) -> tuple[str, bytes]:
        """Complete lines of bytes in; out, the text after a newline (every line starts after one:
        the header pattern's anchor) with carriage-return rewrites resolved, and its bytes (the
        probe of ``prepare``).

        Rewrites: Windows line ends become newlines; otherwise every rewrite is a line
        (``keep_rewrites``) or only what a terminal shows is kept (``_drop_rewrites``).
        """
        raw = b"\n" + raw
        rewrites = raw.count(b"\r")
        if rewrites:
            i = raw.find(b"\r")
            crlf = raw.count(b"\r\n") if raw[i + 1 : i + 2] == b"\n" else 0  # count only if likely
            if crlf == rewrites:  # Windows line ends (a "\r\n" after a rewrite is left to the rules below)
                raw = raw.replace(b"\r\n", b"\n")
            else:
                self.st.rewrites += rewrites - crlf
                if (
                    self.keep_rewrites
                ):  # (the probe keeps the "\r": a table row after one is not a line start)
                    return raw.replace(b"\r", b"\n").decode("utf-8", errors="replace"), raw
                raw = _drop_rewrites(raw)
        return raw.decode("utf-8", errors="replace"), raw

    def prepare(self, text: str, probe: bytes) -> str:
        """Lines from ``decoded`` in, the same lines with every reading rule applied as ``key=value``
        text.

        ``probe`` is their bytes (or an encoding of ``text``): "is it there?" tests run on bytes,
        several times faster than on a str holding non-ASCII text (tqdm's block characters).
        """
        if b"\x1b" in probe:
            text = ANSI_RE.sub("", text)
        if b"(" in probe and (b"tensor(" in probe or b"np." in probe or b"array(" in probe):
            text = _WRAP_RE.sub("", text)
        if b"://" in probe:
            text = _URL_RE.sub(" ", text)  # "discussions?p=0" in a URL is not a metric
        if b"Error" in probe or b"Exception" in probe:
            text = _ERROR_LINE_RE.sub("", text)  # (a traceback's "File ..., line N" is bookkeeping)
        if b" rate" in probe and b" avg" in probe:
            text = _DARKNET_RE.sub(_darknet, text)
        if b"Epoch" in probe:
            text = _MMDET_RE.sub(_mmdet_step, text)
        if b"loss scale" in probe:
            text = _LOSS_SCALE_RE.sub(r"; loss_scale=\1", text)  # ";": not a two-word key
        if b"|" in probe and (self.pipe_cols or self.pipe_groups or _pipe_lines(probe)):
            text = self._pipe_tables(text)
        if self.ws_cols or _HEADER_RE.search(text):
            text = self._ws_tables(text)
        low = probe.lower()
        if b"est" in low or b"al" in low:
            text = self._splits(text)
        if b"/" in probe and (b"| " in probe and b" [" in probe or b"[" in probe):
            if b"Train:" in probe or b"TRAIN:" in probe:
                text = _TIMM_EPOCH_RE.sub(r"epoch=\1", text)
            for counter, mark in _COUNTER_RES:
                text = counter.sub(mark, text)
        if b" batches" in probe and b"/" in probe:
            text = _BATCHES_RE.sub(_BATCHES_MARK, text)
        return text

    def _splits(self, text: str) -> str:
        """Lines that print a split word before their first signal: their keys take that split."""
        low = text.encode("utf-8", "replace").lower()  # "\n" is one byte: lines match text's
        hits = sorted(
            m.start()
            for finder in _SPLIT_FINDERS
            for m in finder.finditer(low)
            if m.start() == 0 or low[m.start() - 1] not in _WORDISH
        )
        if not hits:
            return text
        lines = text.split("\n")
        changed = False
        line = prev = 0
        done = -1
        for h in hits:
            line += low.count(b"\n", prev, h)
            prev = h
            if line == done:
                continue
            done = line
            split, _ = _split_of_line(lines[line])
            if split is not None:
                lines[line] = _KV_RE.sub(lambda m, s=split: _prefixed(m, s), lines[line])
                changed = True
        return "\n".join(lines) if changed else text

    def _pipe_tables(self, text: str) -> str:
        """Markdown and ASCII tables: a header row of titles (an optional group row of split words
        above it: "| train | | validate |"), rule rows, then rows of numbers."""
        out: list[str] = []
        pos = 0
        for m in _PIPE_ROW_RE.finditer(text):
            cells = [c.strip() for c in m.group(0).strip().strip("|").split("|")]
            new = self._pipe_row(cells)
            if new is not None:
                out.append(text[pos : m.start()])
                out.append(new)
                pos = m.end()
        if not out:
            return text
        out.append(text[pos:])
        return "".join(out)

    def _pipe_row(self, cells: list[str]) -> str | None:
        filled = [c for c in cells if c]
        if not filled:
            return None
        if all(_RULE_CELL_RE.match(c) for c in filled):
            return ""  # a rule row
        nums = [bool(_CELL_NUM_RE.match(c)) for c in cells]
        if not any(nums):
            if any(re.search(r"[a-zA-Z]\w*[ \t]+[-+]?\d", c) for c in filled):
                self.pipe_cols = []  # "| epoch 027 | loss 6.3 |" (fairseq): pairs, not a table
                return None
            words = [c.lower() for c in cells]
            if all(not w or w in SPLITS for w in words):
                self.pipe_groups, self.pipe_cols = words, []
                return ""
            self.pipe_cols = [_cell_key(c) for c in cells]
            if len(self.pipe_groups) == len(cells):
                split = ""
                for i, g in enumerate(self.pipe_groups):
                    split = SPLITS[g] if g else split
                    if split and self.pipe_cols[i] and self.pipe_cols[i].partition("_")[0] not in SPLITS:
                        self.pipe_cols[i] = f"{split}_{self.pipe_cols[i]}"
            self.pipe_groups = []
            return ""
        if len(cells) != len(self.pipe_cols):
            return None
        pairs = [f"{k}={c}" for k, c, n in zip(self.pipe_cols, cells, nums, strict=True) if k and n]
        return " ".join(pairs)

    def _ws_tables(self, text: str) -> str:
        """Whitespace tables whose header row names the columns (Ultralytics' "Epoch GPU_mem
        box_loss ..." and "Class Images Instances Box(P R mAP50 mAP50-95)"): rows below it with one
        number per column (a leading label like "all" allowed) become ``key=value`` pairs.

        Work is proportional to the tables: only header candidates and the rows after them are split.
        """
        out: list[str] = []
        pos = 0
        if self.ws_cols:
            pos = self._ws_rows(text, 0, out)
        for m in _HEADER_RE.finditer(text):
            if m.start() < pos:
                continue
            toks = _row_tokens(m.group(1))
            if len(toks) < 3 or not all(t[:1].isalpha() and not _NAN_RE.match(t) for t in toks):
                continue
            nxt = _next_line(text, m.end())
            if nxt is not None and not _row_fits(nxt, len(toks)):
                continue
            out.append(text[pos : m.start()])  # the header itself is dropped: titles, no numbers
            self.ws_cols = [_cell_key(t) for t in toks]
            pos = self._ws_rows(text, m.end(), out)
        if not out:
            return text
        out.append(text[pos:])
        return "".join(out)

    def _ws_rows(self, text: str, pos: int, out: list[str]) -> int:
        """Rewrite the rows of the open table from ``pos``; returns where they end (closing the table)."""
        n = len(self.ws_cols)
        while True:
            end = text.find("\n", pos + 1) if pos < len(text) else -1
            if end < 0:
                return pos  # the batch ends inside the table: it stays open for the next batch
            line = text[pos + 1 : end] if text[pos : pos + 1] == "\n" else text[pos:end]
            if not line.strip():
                out.append(text[pos:end])
                pos = end
                continue
            toks = _row_tokens(line)
            if len(toks) != n or not _row_fits(line, n):
                self.ws_cols = []
                return pos
            if not _CELL_NUM_RE.match(toks[0]) and self.ws_cols[0] not in ("class", ""):
                self.ws_cols = []
                return pos
            out.append(
                "\n"
                + " ".join(
                    f"{k}={t}" for k, t in zip(self.ws_cols, toks, strict=True) if _CELL_NUM_RE.match(t)
                )
            )
            pos = end

    # -- "key=value" text -> points ---------------------------------------------------------------
    def points(self, text: str) -> tuple[np.ndarray, ...] | None:
        """The points of prepared text as arrays: (signal id, key code, step, value, digits, own step).

        Digits are -1 for nan/inf. Lines are delimited by newline marks; see the module doc for the
        step rule.
        """
        pairs = _KV_RE.findall(text.replace("\n", _NL_MARK))
        if not pairs:
            return None
        st, kinds = self.st, self.kinds
        ks, vs, fs, xs, ps, ds = zip(*pairs, strict=True)  # columns: key, value, decimals, exponent, %, ratio
        n = len(ks)
        for k in dict.fromkeys(ks):  # first-appearance order, so the signal cap keeps the earliest keys
            if k not in kinds.code:
                kinds.add(k)
        code = np.fromiter(map(kinds.code.__getitem__, ks), np.int64, n)
        try:
            vals = np.fromiter(map(float, vs), np.float64, n)
        except ValueError:  # "nanxxx" (a format's fill character): the slow path
            vals = np.fromiter(map(_float, vs), np.float64, n)
        axis = np.asarray(kinds.axis, np.int64)[code]
        line = np.cumsum(axis == _NEWLINE)  # line id within the batch (0 before the first newline mark)
        nlines = int(line[-1]) + 1
        sig = np.asarray(kinds.sig, np.int64)[code]
        finite = np.isfinite(vals)
        decimals = np.fromiter(map(len, fs), np.int64, n)
        # A number that overflowed (400 digits) is not an infinite loss: that record is skipped.
        bad_line = np.zeros(nlines, bool)
        overflow = ~finite & ~np.isnan(vals)
        if overflow.any():
            overflow &= np.fromiter((v[-1:].isdigit() or v[-1:] == "." for v in vs), bool, n)
            bad_line[line[overflow]] = True
            if overflow.any():
                st.skip(int(np.unique(line[overflow]).size), "a number too large to be a training value")
        # Step printed on the line; one that cannot be a step (1e30, a fraction) makes the line bad.
        is_step = axis == STEP
        ok_step = (
            is_step & finite & (vals >= 0) & (vals < _MAX_STEP) & (vals == np.floor(vals)) & (decimals == 0)
        )
        wild = is_step & ~ok_step & (np.isnan(vals) | (decimals == 0) & (np.abs(vals) >= _MAX_STEP))
        if wild.any():
            bad_line[line[wild]] = True
            st.skip(int(np.unique(line[wild]).size), "a step that cannot be a step (NaN, or >= 2**53)")
        printed = np.full(nlines, -1, np.int64)
        printed[line[ok_step]] = vals[ok_step].astype(np.int64)
        # Epoch printed on the line, carried forward.
        is_epoch = (axis == EPOCH) & finite & (vals >= 0) & (vals < _MAX_STEP)
        epoch = np.full(nlines, -1, np.int64)
        epoch[line[is_epoch]] = np.floor(vals[is_epoch]).astype(np.int64)
        if self.epoch_base < 0 and is_epoch.any():
            self.epoch_base = min(int(epoch[line[is_epoch]][0]), 1)
        epoch_ff = _ffill(epoch, self.epoch)
        # A progress counter "i/n [" counts steps: across epochs when an epoch is printed.
        is_ctr = axis == _COUNTER
        if is_ctr.any():
            ci = np.flatnonzero(is_ctr)
            tot_of = {x: _int(x) for x in set(ds)}
            tot = np.fromiter(map(tot_of.__getitem__, ds), np.int64, n)[ci]
            e = epoch_ff[line[ci]]
            e_idx = np.where(e >= 0, np.maximum(e - max(self.epoch_base, 0), 0), 0)
            ctr = vals[ci].astype(np.int64) + e_idx * tot
            no_step = printed[line[ci]] < 0
            printed[line[ci][no_step]] = ctr[no_step]
        own = printed >= 0
        carried = _ffill(printed, st.last_explicit)
        is_sig = (sig >= 0) & ~bad_line[line]
        has_sig = np.zeros(nlines, bool)
        has_sig[line[is_sig]] = True
        rec = st.records + np.cumsum(has_sig) - 1
        step_of_line = np.where(carried >= 0, carried, rec)
        by_epoch = np.flatnonzero(has_sig & (carried < 0) & (epoch_ff >= 0))
        if by_epoch.size:
            sel = np.flatnonzero(is_sig & (carried[line] < 0) & (epoch_ff[line] >= 0))
            step_of_line[by_epoch] = self._epoch_steps(line[sel].tolist(), sig[sel].tolist(), epoch_ff)
        if own.any():
            st.last_explicit = int(printed[own][-1])
        if (epoch >= 0).any():
            self.epoch = int(epoch[epoch >= 0][-1])
        nrec = int(has_sig.sum())
        if not nrec:
            return None
        st.records += nrec
        st.last_step = max(st.last_step, int(step_of_line[has_sig].max()))
        idx = np.flatnonzero(is_sig)
        st.points += len(idx)
        steps = step_of_line[line[idx]]
        v = vals[idx]
        # Digits shown: decimals minus exponent ("5e-05" shows 5); nan/inf show none.
        dig = decimals[idx]
        if xs.count("") != n:
            exp_of = {x: _int(x) for x in set(xs)}  # few distinct exponents: map, not a loop
            exps = np.fromiter(map(exp_of.__getitem__, xs), np.int64, n)
            dig = np.clip(dig - exps[idx], 0, 400)
        pct = np.fromiter(map("%".__eq__, ps), bool, n)[idx] if "%" in ps else np.zeros(len(idx), bool)
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
            den_of = {x: _int(x) for x in set(ds)}
            den = np.fromiter(map(den_of.__getitem__, ds), np.int64, n)[idx]
            r = den > 0
            v[r] = v[r] / den[r]
            dig[r] = np.maximum(np.fromiter(map(len, ds), np.int64, n)[idx][r] - 1, 0)
        dig = np.where(np.isfinite(v), dig, -1)
        return sig[idx], code[idx], steps, v, dig, own[line[idx]]

    def _epoch_steps(self, lines: list[int], sigs: list[int], epoch_of: np.ndarray) -> list[int]:
        """Steps of the lines of a log that prints epochs but no step (one entry per line in ``lines``,
        which holds the line of each signal pair, in order).

        A record is a run of lines that repeats no signal within one epoch (a multi-line summary,
        "TRAIN EPOCH 0:" then "loss ...", "accuracy ..." lines, is one record). While every epoch
        holds one record, the step is the epoch printed (Keras' "Epoch 12/100" is step 12); from the
        first epoch that holds several (per-batch lines without a counter), records are counted on
        from the last step, so steps never repeat or go back.
        """
        out: list[int] = []
        i = 0
        while i < len(lines):
            li = lines[i]
            ids = set()
            while i < len(lines) and lines[i] == li:
                ids.add(sigs[i])
                i += 1
            e = int(epoch_of[li])
            new_epoch = e != self.ep_key
            if new_epoch or ids & self.ep_seen:  # a new record
                if not new_epoch:
                    self.ep_counting = True  # several records in one epoch: count them
                step = self.ep_step + 1 if self.ep_counting else e
                self.ep_step = max(step, self.ep_step + 1) if self.ep_step >= 0 else step
                self.ep_key, self.ep_seen = e, set()
            self.ep_seen |= ids
            out.append(self.ep_step)
        return out

    def feed(self, raw: bytes, sink: Sink) -> None:
        """Read complete lines of bytes into ``sink`` (the audit path: one call per series and batch)."""
        arrays = self.points(self.prepare(*self.decoded(raw)))
        if arrays is None:
            return
        sig, _code, steps, v, dig, _own = arrays
        names = self.kinds.names
        for nid in np.unique(sig):
            sel = np.flatnonzero(sig == nid)
            dd = dig[sel]
            d = int(dd[dd >= 0].min()) if (dd >= 0).any() else None
            sink.extend(names[nid], steps[sel], v[sel], d)  # History keeps the fewest digits

    def lines(self, lines: list[str]) -> Points:
        """Read a batch of output lines (the ``run`` path): every point in order, with its key."""
        out = Points()
        text = "\n".join(lines) + "\n"
        if "\r" in text:  # the runner splits lines at "\r": another caller's rewrites are resolved
            text, probe = self.decoded(text.encode("utf-8", "replace"))
        else:
            text = "\n" + text
            probe = text.encode("utf-8", "replace")
        arrays = self.points(self.prepare(text, probe))
        if arrays is None:
            return out
        sig, code, steps, v, dig, own = arrays
        names, keys = self.kinds.names, self.kinds.keys
        out.names = [names[i] for i in sig.tolist()]
        out.keys = [keys[c] for c in code.tolist()]
        out.steps = steps.tolist()
        out.values = v.tolist()
        out.digits = [None if d < 0 else d for d in dig.tolist()]
        out.own_step = own.tolist()
        return out


def _float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return float(s.rstrip("x"))  # "nanxxx": nan padded by a format's fill character


def _int(s: str) -> int:
    if not s:
        return 0
    try:
        return max(min(int(s), 10**6), -(10**6))
    except ValueError:
        return 0


def _ffill(a: np.ndarray, start: int) -> np.ndarray:
    """Each entry of ``a`` (-1 = none) replaced by the last entry >= 0 at or before it, else ``start``."""
    last = np.where(a >= 0, np.arange(len(a)), -1)
    np.maximum.accumulate(last, out=last)
    return np.where(last >= 0, a[np.maximum(last, 0)], start)


def read_text(path: str, add: AddPoint | Sink, *, keep_rewrites: bool = False) -> TextStats:
    """Stream a console log into ``add(name, step, value, digits)``, in chunks of whole lines.

    Args:
        path: the log file.
        add: the sink, usually ``History.add_point``.
        keep_rewrites: keep every ``\\r`` rewrite (used when a log is one long progress bar).

    Returns:
        Counters of what was read.
    """
    parser = TextParser(keep_rewrites=keep_rewrites)
    st = parser.st
    sink = as_sink(add)

    def process(raw: bytes) -> None:
        if not st.points and not st.traceback and _TRACEBACK_B in raw:
            st.traceback = True  # only matters for the "no records" reason
        if not st.points:  # lines are counted for the "no records" reason only (a pass over the bytes)
            st.lines += raw.count(b"\n")
        parser.feed(raw, sink)

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
