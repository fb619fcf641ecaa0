"""The key/value scan of printed text: the one ``key <sep> number`` pattern, the pseudo keys that
mark line ends and progress counters in a scan, the decimals a printed number shows, and the split
a line's leading word gives its keys (``Test set: Average loss: 2.31`` -> ``test_loss``)."""

from __future__ import annotations

import re

from muvo_doctor.core.names import SIGNAL, SPLITS, key_of, kind_of

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
KV_RE = re.compile(_KV)

# Record boundaries: each newline is followed by a pair the key regex itself matches, so one
# findall over a chunk yields pairs and line ends in order. Another pseudo key carries a progress
# counter ("| 67/704 [" becomes "| Zqctr=67/704 [").
NL_KEY = "Zqnl"
NL_MARK = "\n" + NL_KEY + "=0 "
CTR_KEY = "Zqctr"

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


def decimals_shown(num: str) -> int | None:
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
    for m in KV_RE.finditer(line):
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


def split_named_lines(text: str) -> str:
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
            lines[line] = KV_RE.sub(lambda m, s=split: _prefixed(m, s), lines[line])
            changed = True
    return "\n".join(lines) if changed else text


def to_float(s: str) -> float:
    """A printed value as a float; a nan padded by a format's fill character too."""
    try:
        return float(s)
    except ValueError:
        return float(s.rstrip("x"))  # "nanxxx": nan padded by a format's fill character


def to_int(s: str) -> int:
    """A captured exponent or denominator as an int, clamped to +-10**6; 0 when there is none."""
    if not s:
        return 0
    try:
        return max(min(int(s), 10**6), -(10**6))
    except ValueError:
        return 0
