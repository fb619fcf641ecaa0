"""Key/value matches turned into points: each pair's signal, value and digits shown, and the step of
each line (printed, carried, counted across epochs, or the record index; see ``text``'s module doc
for the rule), with the counters of what was read and skipped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from muvo_doctor.core.names import EPOCH, STEP, key_of, kind_of
from muvo_doctor.logs.base import MAX_STEP
from muvo_doctor.logs.text_pairs import CTR_KEY, NL_KEY
from muvo_doctor.logs.text_scan import PairScanner, Scan

NEWLINE, COUNTER = 4, 5  # axis kinds next to core.names.SIGNAL/STEP/EPOCH/NOISE
# Distinct signals kept per log: a log that prints a new key on every line ("sample_123 0.5")
# must not grow the history without bound.
MAX_SIGNALS = 1000


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


class Kinds:
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
        if key == NL_KEY:
            name, frac, axis = None, False, NEWLINE
        elif key == CTR_KEY:
            name, frac, axis = None, False, COUNTER
        else:
            name, frac, axis = kind_of(key)
        self.code[key] = len(self.sig)
        nid = -1 if name is None else self.name_id.get(name, -1)
        if name is not None and nid < 0 and len(self.names) < MAX_SIGNALS:
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


class _Pairs(NamedTuple):
    """The ``n`` pairs of one batch as columns, in order: the scan and the arrays of each pair."""

    n: int
    scan: Scan  # exponents, percentages, ratio denominators (see text_scan.Scan)
    code: np.ndarray  # key code (Kinds)
    vals: np.ndarray
    axis: np.ndarray  # SIGNAL/STEP/EPOCH/NOISE/NEWLINE/COUNTER
    line: np.ndarray  # line id within the batch (0 before the first newline mark)
    nlines: int
    sig: np.ndarray  # signal id, -1 for axis/bookkeeping keys
    finite: np.ndarray
    decimals: np.ndarray  # digits after the point as printed


class PointReader:
    """Matches to points, with the state that carries across batches: the counters (``st``), the key
    cache (``kinds``), the last epoch printed and the records of an epochs-only log."""

    def __init__(self) -> None:
        self.st = TextStats()
        self.kinds = Kinds()
        self.scanner = PairScanner()
        self.epoch = -1  # the last epoch printed
        self.epoch_base = -1  # the first epoch printed (0 or 1): counters count from it
        # records of a log that prints epochs but no steps (see _epoch_steps)
        self.ep_key = -1  # the epoch of the current record
        self.ep_seen: set[int] = set()  # its signals
        self.ep_step = -1  # its step
        self.ep_counting = False  # an epoch held several records: steps count records

    def points(self, text: str) -> tuple[np.ndarray, ...] | None:
        """The points of prepared text as arrays: (signal id, key code, step, value, digits, own step).

        Digits are -1 for nan/inf. Lines are delimited by newline marks; see the module doc for the
        step rule.
        """
        p = self._scan(text)
        if p is None:
            return None
        st = self.st
        bad_line, printed = self._printed_steps(p)
        epoch, epoch_ff = self._epochs(p)
        self._count_progress(p, printed, epoch_ff)
        own = printed >= 0
        carried = _ffill(printed, st.last_explicit)
        is_sig = (p.sig >= 0) & ~bad_line[p.line]
        has_sig = np.zeros(p.nlines, bool)
        has_sig[p.line[is_sig]] = True
        step_of_line = self._line_steps(p, carried, is_sig, has_sig, epoch_ff)
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
        v, dig = self._values_shown(p, idx)
        return p.sig[idx], p.code[idx], step_of_line[p.line[idx]], v, dig, own[p.line[idx]]

    def _scan(self, text: str) -> _Pairs | None:
        """Every pair of the batch, newline marks included, as columns; None when there is none."""
        scan = self.scanner.scan(text)
        if scan is None:
            return None
        kinds = self.kinds
        n = len(scan.key)
        if any(k not in kinds.code for k in scan.keys):
            # in order of first appearance, so the signal cap keeps the earliest keys
            first = np.unique(scan.key, return_index=True)[1]
            for i in np.argsort(first).tolist():
                if scan.keys[i] not in kinds.code:
                    kinds.add(scan.keys[i])
        code = np.asarray([kinds.code[k] for k in scan.keys], np.int64)[scan.key]
        vals = scan.vals
        axis = np.asarray(kinds.axis, np.int64)[code]
        line = np.cumsum(axis == NEWLINE)
        return _Pairs(
            n=n,
            scan=scan,
            code=code,
            vals=vals,
            axis=axis,
            line=line,
            nlines=int(line[-1]) + 1,
            sig=np.asarray(kinds.sig, np.int64)[code],
            finite=np.isfinite(vals),
            decimals=scan.decimals,
        )

    def _printed_steps(self, p: _Pairs) -> tuple[np.ndarray, np.ndarray]:
        """Per line: whether it is skipped, and the step it prints (-1 for none)."""
        st, line, vals, decimals = self.st, p.line, p.vals, p.decimals
        # A number that overflowed (400 digits) is not an infinite loss: that record is skipped.
        bad_line = np.zeros(p.nlines, bool)
        overflow = ~p.finite & ~np.isnan(vals)
        if overflow.any():
            overflow &= np.fromiter((v[-1:].isdigit() or v[-1:] == "." for v in p.scan.printed()), bool, p.n)
            bad_line[line[overflow]] = True
            if overflow.any():
                st.skip(int(np.unique(line[overflow]).size), "a number too large to be a training value")
        # Step printed on the line; one that cannot be a step (1e30, a fraction) makes the line bad.
        is_step = p.axis == STEP
        ok_step = (
            is_step & p.finite & (vals >= 0) & (vals < MAX_STEP) & (vals == np.floor(vals)) & (decimals == 0)
        )
        wild = is_step & ~ok_step & (np.isnan(vals) | (decimals == 0) & (np.abs(vals) >= MAX_STEP))
        if wild.any():
            bad_line[line[wild]] = True
            st.skip(int(np.unique(line[wild]).size), "a step that cannot be a step (NaN, or >= 2**53)")
        printed = np.full(p.nlines, -1, np.int64)
        printed[line[ok_step]] = vals[ok_step].astype(np.int64)
        return bad_line, printed

    def _epochs(self, p: _Pairs) -> tuple[np.ndarray, np.ndarray]:
        """Per line: the epoch it prints (-1 for none), and the epoch printed at or before it."""
        vals = p.vals
        is_epoch = (p.axis == EPOCH) & p.finite & (vals >= 0) & (vals < MAX_STEP)
        epoch = np.full(p.nlines, -1, np.int64)
        epoch[p.line[is_epoch]] = np.floor(vals[is_epoch]).astype(np.int64)
        if self.epoch_base < 0 and is_epoch.any():
            self.epoch_base = min(int(epoch[p.line[is_epoch]][0]), 1)
        return epoch, _ffill(epoch, self.epoch)

    def _count_progress(self, p: _Pairs, printed: np.ndarray, epoch_ff: np.ndarray) -> None:
        """A progress counter "i/n [" counts steps, across epochs when an epoch is printed: it is the
        step of a line that prints none (``printed`` is updated in place)."""
        is_ctr = p.axis == COUNTER
        if not is_ctr.any():
            return
        ci = np.flatnonzero(is_ctr)
        tot = np.zeros(len(ci), np.int64) if p.scan.dens is None else p.scan.dens[ci]
        e = epoch_ff[p.line[ci]]
        e_idx = np.where(e >= 0, np.maximum(e - max(self.epoch_base, 0), 0), 0)
        ctr = p.vals[ci].astype(np.int64) + e_idx * tot
        no_step = printed[p.line[ci]] < 0
        printed[p.line[ci][no_step]] = ctr[no_step]

    def _line_steps(
        self, p: _Pairs, carried: np.ndarray, is_sig: np.ndarray, has_sig: np.ndarray, epoch_ff: np.ndarray
    ) -> np.ndarray:
        """The step of each line: the step printed or carried, else by the epochs printed, else the
        record index."""
        rec = self.st.records + np.cumsum(has_sig) - 1
        step_of_line = np.where(carried >= 0, carried, rec)
        by_epoch = np.flatnonzero(has_sig & (carried < 0) & (epoch_ff >= 0))
        if by_epoch.size:
            line = p.line
            sel = np.flatnonzero(is_sig & (carried[line] < 0) & (epoch_ff[line] >= 0))
            step_of_line[by_epoch] = self._epoch_steps(line[sel].tolist(), p.sig[sel].tolist(), epoch_ff)
        return step_of_line

    def _values_shown(self, p: _Pairs, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The values of the signal pairs ``idx`` and the digits each shows (-1 for nan/inf);
        percentages and ratios as fractions."""
        scan = p.scan
        v = p.vals[idx]
        # Digits shown: decimals minus exponent ("5e-05" shows 5); nan/inf show none.
        dig = p.decimals[idx]
        if scan.exps is not None:
            dig = np.clip(dig - scan.exps[idx], 0, 400)
        pct = scan.pct[idx] if scan.pct is not None else np.zeros(len(idx), bool)
        frac_sig = np.asarray(self.kinds.frac, bool)[p.code[idx]]
        # Accuracy-like values printed 0..100 without "%" are percentages too (MMDetection "acc: 90.0").
        pct |= frac_sig & (v > 1.0) & (v <= 100.0)
        if pct.any():
            dig[pct] += 2
            for d in np.unique(dig[pct]):
                m = pct & (dig == d)
                v[m] = np.round(v[m] / 100.0, int(d))  # 89.93% is 0.8993, not 0.8993000000000001
        if scan.dens is not None and scan.den_len is not None:
            # A ratio "9832/10000" is the fraction 0.9832, shown to about 1/10000.
            den = scan.dens[idx]
            r = den > 0
            v[r] = v[r] / den[r]
            dig[r] = np.maximum(scan.den_len[idx][r] - 1, 0)
        return v, np.where(np.isfinite(v), dig, -1)

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


def _ffill(a: np.ndarray, start: int) -> np.ndarray:
    """Each entry of ``a`` (-1 = none) replaced by the last entry >= 0 at or before it, else ``start``."""
    last = np.where(a >= 0, np.arange(len(a)), -1)
    np.maximum.accumulate(last, out=last)
    return np.where(last >= 0, a[np.maximum(last, 0)], start)
