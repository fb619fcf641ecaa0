"""Data: the embedded synthetic AnoVox-like scenes and the real AnoVox reader, both yielding Frames."""

from muvo_model.data.frames import ANOMALY_IDS, IGNORE_IDS, Frames

__all__ = ["ANOMALY_IDS", "IGNORE_IDS", "Frames"]
