"""Secrets out of a command line before it is shown anywhere (reports, records, alerts, the screen).

The rule (docs/run.md, "Secrets"): a name is *secret-like* when it contains one of
:data:`SECRET_WORDS` (any case). Then

- the value after a secret-like flag is masked: ``--api-key X`` and ``--api-key=X``;
- the value of a secret-like ``NAME=value`` (environment style, ``HF_TOKEN=...``, ``db.password=...``);
- the password of a URL: ``https://user:pass@host`` becomes ``https://user:REDACTED@host``.

A word holding spaces (``sh -c "python train.py --token X"``) is searched the same way inside.
Masking more than needed is the safe side (``--author X`` is masked too); only ``tokenizer`` and
``tokens`` (a count) are not secret-like.
"""

from __future__ import annotations

import re
import shlex

MASK = "REDACTED"  # shlex.join leaves it unquoted, so the command line stays readable
SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "auth", "credential")

# "tokenizer" and "max_tokens" name no secret: the two common ML words that would match.
_WORD = "|".join(SECRET_WORDS).replace("token", "token(?!iz|s(?![a-z]))")
_SECRET_NAME = re.compile(rf"(?i)(?:{_WORD})")
# A flag with its value joined by '=' (or a NAME=value), inside any text.
_JOINED = re.compile(rf"(?i)(?<![\w.-])(-{{0,2}}[\w.-]*(?:{_WORD})[\w.-]*=)([^\s'\"]+)")
# A flag followed by its value as the next word, inside a text with spaces.
_SPACED = re.compile(rf"(?i)(?<![\w.-])(--?[\w.-]*(?:{_WORD})[\w.-]*\s+)(?!-)([^\s'\"]+)")
_URL_PASSWORD = re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^\s/:@]*:)([^\s/@]+)(@)")


def redact_text(text: str) -> str:
    """``text`` with every secret of the rule above replaced by :data:`MASK`."""
    text = _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), text)
    text = _JOINED.sub(lambda m: m.group(1) + MASK, text)
    return _SPACED.sub(lambda m: m.group(1) + MASK, text)


def redact_argv(argv: list[str]) -> list[str]:
    """``argv`` with secrets masked; the value after a secret-like flag is the next word."""
    out: list[str] = []
    mask_next = False
    for word in argv:
        if mask_next and not word.startswith("--"):
            out.append(MASK)
            mask_next = False
            continue
        mask_next = word.startswith("-") and "=" not in word and bool(_SECRET_NAME.search(word))
        out.append(redact_text(word))
    return out


def command_line(argv: list[str], *, redact: bool = True) -> str:
    """The command as one shell-quoted line, for every output that names it."""
    return shlex.join(redact_argv(argv) if redact else argv)
