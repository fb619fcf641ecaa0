"""Every fault, on both architectures, trains under torchrun DDP (2 gloo processes on CPU) without a crash.

Faults that drop the point loss (random-labels, ...) or detach the logits leave parameters without a
gradient; DDP then failed at step 2 with "parameters that were not used in producing loss".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from muvo_model.faults import FAULTS

WORKER = Path(__file__).with_name("ddp_faults_worker.py")


@pytest.mark.slow
def test_every_fault_and_arch_trains_under_two_process_ddp(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(WORKER), "fusion,original"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    done = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("ok ")]
    expected = [[arch, name, "3"] for arch in ("fusion", "original") for name in FAULTS]
    expected.append(["fusion", "none", "train.point_loss_weight=0", "3"])
    assert done == expected, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
