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

import importlib
from typing import Any

__all__ = ["Doctor", "DoctorConfig", "Finding", "Observation", "Recorder", "Report", "load_config", "watch"]

# Everything is imported on first use: the `run` wrapper's child bootstrap imports this package inside
# every training process, and `explain`/`audit` should not pay for torch.
_WHERE = {
    "Doctor": "muvo_doctor.core.doctor",
    "DoctorConfig": "muvo_doctor.core.config",
    "load_config": "muvo_doctor.core.config",
    "Finding": "muvo_doctor.core.finding",
    "Report": "muvo_doctor.core.finding",
    "Observation": "muvo_doctor.core.observation",
    "Recorder": "muvo_doctor.recorder",
    "watch": "muvo_doctor.recorder",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'muvo_doctor' has no attribute {name!r}")
