"""Printed lines made readable before the key/value scan: carriage-return rewrites resolved, colour
codes, value wrappers, URLs and error lines out, and the lines of frameworks that print no
``key=value`` pairs (Darknet, MMDetection, fp16 loss-scale messages, progress counters) rewritten
as pairs. Tables and split words, which need state or the scan itself, are in ``text_tables`` and
``text_pairs``."""

from __future__ import annotations

import re
from bisect import bisect_left

import numpy as np

from muvo_doctor.logs.text_pairs import CTR_KEY

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
# tqdm's "{bar}| {n}/{total} [": batches done. (Keras' "1875/1875 [====" is not used: it counts
# batches or samples depending on the version; its "Epoch 3/30" is the unambiguous axis.)
# Also "[6400/60000 (11%)]" (PyTorch examples, timm): samples or batches done in the epoch.
# One pattern per delimiter, each starting with it (a cheap first-character test, unlike a
# lookbehind), so the mark is a literal replacement (a function or a template runs Python per match).
_COUNTER_RES = tuple(
    (re.compile(rf"\{d}[ \t]*(?=\d+/\d+(?=[ \t]*[(\]]| \[))"), f"{d} {CTR_KEY}=") for d in "|["
)
# pytorch/examples word_language_model: "| epoch   3 |   200/ 2983 batches | lr 20.00 | ...": the batch
# counter of the epoch, a space after the slash and the word "batches" (which would mark it a count).
_BATCHES_RE = re.compile(r"\|[ \t]*(\d+)/[ \t]*(\d+)[ \t]+batches\b")
_BATCHES_MARK = rf"| {CTR_KEY}=\1/\2"
# timm prints the epoch as "Train: 3 [ 100/1251 ( 8%)]"
_TIMM_EPOCH_RE = re.compile(r"\b(?:Train|TRAIN):[ \t]*(\d+)(?=[ \t]*\[)")


def strip_ansi(text: str) -> str:
    """Colour codes, cursor moves and OSC titles out of printed text."""
    return ANSI_RE.sub("", text) if "\x1b" in text else text


def clean(text: str) -> str:
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
    decoded and parsed. Lines without a rewrite are copied in slices, never split; a line without
    a completed bar is not copied either (``_last_shown``).
    """
    out: list[bytes] = []
    bars = _bar_starts(raw)
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
        i = bisect_left(bars, start) if bars else 0
        kept = (
            _shown_bars(raw[start:end]) if i < len(bars) and bars[i] < end else _last_shown(raw, start, end)
        )
        if kept is None:
            out.append(raw[pos : start - 1])  # the line goes, with the newline before it
        else:
            out.append(raw[pos:start])
            out.append(kept)
        pos = end


_PIECE = 1 << 18  # bytes compared at once: larger temporaries cost more in page faults than they save


def _count_cr(raw: bytes) -> int:
    """``raw.count(b"\r")`` by numpy compares in pieces: bytes.count has no fast path for one byte
    (~0.7 ns a byte), and a compare over a whole 2 MB batch pays for its temporary in page faults."""
    b = np.frombuffer(raw, np.uint8)
    return sum(int(np.count_nonzero(b[s : s + _PIECE] == ord("\r"))) for s in range(0, len(b), _PIECE))


def _bar_starts(raw: bytes) -> list[int]:
    """Where each ``100%|`` (a completed tqdm bar) starts in ``raw``, in order. By numpy compares, in
    pieces: about twice as fast as a substring search per line (~0.8 ns a byte), on the batch's
    largest part, its rewritten lines."""
    b = np.frombuffer(raw, np.uint8)
    out: list[int] = []
    for s in range(0, len(b) - 4, _PIECE):
        w = b[s : s + _PIECE + 4]  # (a bar that starts in this piece ends in it or 4 bytes after)
        at = np.flatnonzero((w[4:] == ord("|")) & (w[3:-1] == ord("%")))
        at = at[(w[at] == ord("1")) & (w[at + 1] == ord("0")) & (w[at + 2] == ord("0"))]
        out += (at + s).tolist()
    return out


def _last_shown(raw: bytes, start: int, end: int) -> bytes | None:
    """The last non-blank segment of the line ``raw[start:end]`` (one without a completed bar), None
    when all are blank; the line is not copied."""
    rfind = raw.rfind
    while end >= start:
        b = rfind(b"\r", start, end) + 1 or start  # the segment's start
        if b < end and 32 < raw[b] < 127:  # it starts with a printable character: not blank
            return raw[b:end]
        if b < end and not _blank(raw[b:end]):
            return raw[b:end]
        end = b - 1
    return None


def _blank(seg: bytes) -> bool:
    """Whether str.strip() of the decoded segment is empty (it also strips \\x1c-\\x1f and Unicode
    blanks); decoded only when no printable ASCII character settles it (tqdm's bars have one)."""
    rest = seg.strip(_ASCII_BLANKS)
    if not rest or 32 < rest[0] < 127 or _PRINTABLE_RE.search(rest):  # (a bar starts with one)
        return not rest
    return not rest.decode("utf-8", "replace").strip()


def _shown_bars(line: bytes) -> bytes | None:
    """The kept segments of a line holding rewrites and a completed bar (``100%|``): each completed
    bar that a different bar overwrote, then the last non-blank segment, joined by newlines; None
    when all are blank."""
    # (a segment that starts with a printable character is not blank: most of a tqdm line's)
    segs = [s for s in line.split(b"\r") if s and 32 < s[0] < 127 or not _blank(s)]
    if not segs:
        return None
    # tqdm's close() prints the final bar twice: keep a completed bar only before a new bar.
    done = [a for a, b in zip(segs, segs[1:], strict=False) if b"100%|" in a and b"100%|" not in b]
    return b"\n".join([*done, segs[-1]])


def _mmdet_step(m: re.Match[str]) -> str:
    e, i, n = int(m.group(1)), int(m.group(2)), int(m.group(3))
    return f"step={(e - 1) * n + i} "


def _darknet(m: re.Match[str]) -> str:
    return f"step={m.group(1)} loss={m.group(2)} loss_avg={m.group(3)} lr={m.group(4)}"


def resolve_rewrites(raw: bytes, keep_rewrites: bool) -> tuple[str, bytes, int]:
    """A newline then complete lines of bytes in (every line starts after a newline: the header
    pattern's anchor); out, their text with carriage-return rewrites resolved, its bytes (the probe
    of the "is it there?" tests), and the number of rewrites (not Windows line ends) it held.

    Rewrites: Windows line ends become newlines; otherwise every rewrite is a line
    (``keep_rewrites``) or only what a terminal shows is kept (``_drop_rewrites``).
    """
    rewrites = _count_cr(raw) if b"\r" in raw else 0
    if rewrites:
        i = raw.find(b"\r")
        crlf = raw.count(b"\r\n") if raw[i + 1 : i + 2] == b"\n" else 0  # count only if likely
        if crlf == rewrites:  # Windows line ends (a "\r\n" after a rewrite is left to the rules below)
            raw = raw.replace(b"\r\n", b"\n")
        else:
            if keep_rewrites:  # (the probe keeps the "\r": a table row after one is not a line start)
                return raw.replace(b"\r", b"\n").decode("utf-8", errors="replace"), raw, rewrites - crlf
            raw = _drop_rewrites(raw)
            return raw.decode("utf-8", errors="replace"), raw, rewrites - crlf
    return raw.decode("utf-8", errors="replace"), raw, 0


def rewrite_formats(text: str, probe: bytes) -> str:
    """The rules that need no state, in order: escapes, value wrappers, URLs and error lines out;
    Darknet, MMDetection and loss-scale lines as ``key=value`` pairs. ``probe``: the bytes of
    ``text``; "is it there?" tests run on bytes, several times faster than on a str holding
    non-ASCII text (tqdm's block characters)."""
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
    return text


def mark_counters(text: str, probe: bytes) -> str:
    """Progress counters (tqdm's ``| i/n [``, ``[6400/60000 (11%)]``, ``| 200/ 2983 batches``) as the
    counter pseudo key, and timm's ``Train: 3 [`` as the epoch."""
    if b"/" in probe and (b"| " in probe and b" [" in probe or b"[" in probe):
        if b"Train:" in probe or b"TRAIN:" in probe:
            text = _TIMM_EPOCH_RE.sub(r"epoch=\1", text)
        for counter, mark in _COUNTER_RES:
            text = counter.sub(mark, text)
    if b" batches" in probe and b"/" in probe:
        text = _BATCHES_RE.sub(_BATCHES_MARK, text)
    return text
