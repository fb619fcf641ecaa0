"""CRC-32C of TFRecord framing: the vectorised path agrees with the plain loop and the standard."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import numpy as np

from muvo_doctor.logs.crc32c import crc32c, crc32c_many, masked

LOGS = Path(__file__).parents[1] / "fixtures" / "logs"


def test_check_value_of_the_standard() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C (Castagnoli) check value
    assert int(crc32c_many(b"123456789", np.array([0]), np.array([9]))[0]) == 0xE3069283


def test_many_records_match_the_loop_across_chunk_boundaries() -> None:
    rng = random.Random(0)
    lengths = [0, 1, 3, 4, 5, 8, 63, 64, 65, 4095, 4096, 4097, 9000, 70_000]
    lengths += [rng.randrange(300) for _ in range(200)]
    starts, at = [], 0
    for n in lengths:  # records side by side, as in a file, with gaps for the framing between them
        starts.append(at)
        at += n + rng.randrange(16)
    buf = bytes(rng.getrandbits(8) for _ in range(at))
    got = crc32c_many(buf, np.array(starts), np.array(lengths)).tolist()
    assert got == [crc32c(buf[s : s + n]) for s, n in zip(starts, lengths, strict=True)]


def test_masked_crc_matches_the_fixture_writer() -> None:
    spec = importlib.util.spec_from_file_location("make_fixtures", LOGS / "make_fixtures.py")
    mf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mf)
    rng = random.Random(1)
    for n in (0, 8, 49, 1000):
        data = bytes(rng.getrandbits(8) for _ in range(n))
        assert masked(crc32c(data)) == mf._masked_crc(data)
