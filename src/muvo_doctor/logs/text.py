"""The one reader of printed training text, for ``run`` (the child's output, line by line) and
``audit`` (files, in chunks): the same text gives the same series either way.

What it reads: ``loss=0.3331``, ``Loss: 0.3331``, ``acc 89.93%``, ``Accuracy: 9832/10000``, tqdm and
Lightning postfixes, Keras progress lines, Python-dict lines (``{'loss': '0.32'}``, transformers),
glog/Caffe, Darknet, fairseq, detectron2 and MMDetection console lines, Markdown/ASCII tables and
whitespace tables whose header row names the columns (Ultralytics).

Rules, each in one place:
- split: a key's own split word (``val_loss``, ``test acc``), else the split word the line prints
  before its first signal (``Test set: Average loss: 2.31`` -> ``test/loss``), else the metric's
  default (``loss`` is ``train/loss``); names come from ``core.names.signal_name``.
- step: the step printed on the line (``step``/``iter``/``Iteration``/``num_updates``, MMDetection's
  ``Epoch [e][i/n]``, a progress counter, tqdm's ``| i/n [`` or ``[6400/60000 (11%)]``, counted
  across the epochs printed), else the last such step; in a log that never printed one, the epoch
  printed (``Epoch 3/10``) while each epoch holds one record, counted records after an epoch that
  holds several; else the record index (a record: a line that holds a signal).
- digits: the decimals each value was printed with (``5e-05`` shows 5); a percentage becomes a
  fraction with two more digits, a ratio ``980/10000`` a fraction shown to 1/10000.

A line whose step cannot be a step (``step 1e30``) or a number that overflows (400 digits) is
skipped and counted, never fatal. ``TextParser`` holds the state across chunks or line batches.

The work, in order: ``text_lines`` (rewrites resolved, escapes out, framework lines as pairs),
``text_tables`` (table rows as pairs), ``text_pairs`` (the pair pattern, split words), and
``text_points`` (matches to points and steps).
"""

from __future__ import annotations

import numpy as np

from muvo_doctor.core.names import NOISE, SIGNAL, key_of, kind_of, signal_name
from muvo_doctor.logs.base import AddPoint, Sink, as_sink
from muvo_doctor.logs.text_lines import clean, mark_counters, resolve_rewrites, rewrite_formats
from muvo_doctor.logs.text_pairs import KV_RE, decimals_shown, split_named_lines, to_float
from muvo_doctor.logs.text_points import PointReader, Points, TextStats
from muvo_doctor.logs.text_tables import Tables

__all__ = ["TextParser", "parse_line", "read_text", "signal_name"]

_CHUNK = 2 << 20  # bytes per read: bounds the match list (~70k tuples for dense logs)
_MAX_LINE = 1 << 20  # a "line" longer than this (no newline) is cut, so memory stays bounded
_TRACEBACK_B = b"Traceback (most recent call last)"


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
    line = clean(line)
    out: list[tuple[str, float, int | None]] = []
    for k, v, _f, _x, p, den in KV_RE.findall(line):
        if kind_of(k)[2] == NOISE:
            continue  # bookkeeping: "device='cuda:0'", "time 12", "v_num=3"
        val, d = to_float(v), decimals_shown(v)
        if p:
            d = None if d is None else d + 2
            val = val / 100.0 if d is None else round(val / 100.0, d)
        if den and den.strip("0") and d is not None and kind_of(k)[2] == SIGNAL:  # not "step 200/1000"
            val, d = val / int(den), max(len(den) - 1, 0)  # "Accuracy: 9832/10000" -> 0.9832
        out.append((key_of(k), val, d))
    return out


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
        self.reader = PointReader()
        self.st = self.reader.st
        self.kinds = self.reader.kinds
        self.tables = Tables()

    def decoded(self, raw: bytes) -> tuple[str, bytes]:
        """A newline then complete lines of bytes in; out, their text with carriage-return rewrites
        resolved (``text_lines.resolve_rewrites``), and its bytes (the probe of ``prepare``)."""
        text, probe, rewrites = resolve_rewrites(raw, self.keep_rewrites)
        self.st.rewrites += rewrites
        return text, probe

    def prepare(self, text: str, probe: bytes) -> str:
        """Lines from ``decoded`` in, the same lines with every reading rule applied as ``key=value``
        text.

        ``probe`` is their bytes (or an encoding of ``text``): "is it there?" tests run on bytes,
        several times faster than on a str holding non-ASCII text (tqdm's block characters).
        """
        text = rewrite_formats(text, probe)
        text = self.tables.rewrite(text, probe)
        low = probe.lower()
        if b"est" in low or b"al" in low:
            text = split_named_lines(text)
        return mark_counters(text, probe)

    def feed(self, raw: bytes, sink: Sink) -> None:
        """Read a newline then complete lines of bytes into ``sink`` (the audit path: one call per
        series and batch)."""
        arrays = self.reader.points(self.prepare(*self.decoded(raw)))
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
            text, probe = self.decoded(b"\n" + text.encode("utf-8", "replace"))
        else:
            text = "\n" + text
            probe = text.encode("utf-8", "replace")
        arrays = self.reader.points(self.prepare(text, probe))
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

    def process(raw: bytes) -> None:  # a newline, then complete lines
        if not st.points and not st.traceback and _TRACEBACK_B in raw:
            st.traceback = True  # only matters for the "no records" reason
        if not st.points:  # lines are counted for the "no records" reason only (a pass over the bytes)
            st.lines += raw.count(b"\n") - 1
        parser.feed(raw, sink)

    with open(path, "rb") as f:
        carry = b""  # the end of the last read after its last newline (it holds none)
        while True:
            raw = f.read(_CHUNK)
            st.bytes += len(raw)
            if not raw:
                if carry:
                    process(b"\n" + carry + b"\n")
                break
            cut = raw.rfind(b"\n")
            if cut >= 0:  # the batch in one copy (a copy of 2 MB costs ~0.4 ms with its page faults)
                process(b"".join((b"\n", carry, memoryview(raw)[: cut + 1])))
                carry = raw[cut + 1 :]
                continue
            carry += raw
            if len(carry) > _MAX_LINE:
                # No newline for a megabyte: cut at a rewrite or a space so a number is rarely split.
                cut = max(carry.rfind(b"\r"), carry.rfind(b" "))
                if cut < 0:
                    cut = len(carry) - 1
                process(b"\n" + carry[: cut + 1])
                carry = carry[cut + 1 :]
    return st
