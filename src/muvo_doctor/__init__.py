"""muvo_doctor: training-health diagnostics for PyTorch.

    import muvo_doctor
    with muvo_doctor.watch(model, optimizer) as rec:
        for step, batch in enumerate(loader):
            ...
            rec.record(step, loss=loss, outputs=logits, labels=y)
    print(rec.doctor.report().to_json())

Importing this package does not import torch; ``watch`` and ``Recorder`` do on first use.
"""

from __future__ import annotations

from typing import Any

from muvo_doctor.config import DoctorConfig, load_config
from muvo_doctor.doctor import Doctor
from muvo_doctor.finding import Finding, Report
from muvo_doctor.observation import Observation

__all__ = ["Doctor", "DoctorConfig", "Finding", "Observation", "Recorder", "Report", "load_config", "watch"]


def __getattr__(name: str) -> Any:
    # torch is imported lazily so log audits and `explain` start fast.
    if name in ("Recorder", "watch"):
        from muvo_doctor import recorder

        return getattr(recorder, name)
    raise AttributeError(name)
