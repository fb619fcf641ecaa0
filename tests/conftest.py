"""Fixtures shared by the test folders."""

from __future__ import annotations

import subprocess
import sys

import pytest

# -- `muvo-doctor run` in a subprocess (the run tests) ---------------------------------------------


class DoctorRun:
    """Runs `muvo-doctor run ARGS` as a user or CI would: a subprocess with pipes (plain mode)."""

    argv = (sys.executable, "-m", "muvo_doctor", "run")  # for tests that need a Popen of their own

    def __call__(self, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess[bytes]:
        kw.setdefault("capture_output", True)
        return subprocess.run([*self.argv, *args], timeout=timeout, **kw)


@pytest.fixture
def doctor_run() -> DoctorRun:
    return DoctorRun()


# -- end of the run tests' block -------------------------------------------------------------------
