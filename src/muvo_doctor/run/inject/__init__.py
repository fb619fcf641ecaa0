"""The child bootstrap of `muvo-doctor run`.

The wrapper prepends :data:`PYTHONPATH_DIR` to the child's ``PYTHONPATH``; the only module in
it is ``sitecustomize``, which every Python interpreter imports at start. It costs one
``open``/``write`` at start and does nothing else until the program imports torch; then
:func:`muvo_doctor.run.inject.child.install` installs the recorder (see that module).

Environment (set by the wrapper, read by the child):
    MUVO_DOCTOR_FIFO    path of the telemetry FIFO every process of the child writes to
    MUVO_DOCTOR_CONFIG  optional TOML config path (sampling and flush cadence)
    MUVO_DOCTOR_HOME    directory holding the ``muvo_doctor`` package, appended to ``sys.path``
                        when the child's interpreter (another venv) cannot import it
"""

from __future__ import annotations

from pathlib import Path

PYTHONPATH_DIR = str(Path(__file__).resolve().parent / "pythonpath")
