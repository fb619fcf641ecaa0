"""The AnoVox load report (what was found, kept and dropped) and the loaded result."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from muvo_model.data.frames import Frames


class DroppedFrame(BaseModel):
    """One frame (or a whole scenario, frame None) left out, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    scenario: str
    frame: int | None
    kind: str  # short reason category, e.g. "missing LIDAR", "corrupt .npy", "unreadable PNG"
    detail: str


class SplitStats(BaseModel):
    """What one split holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    scenarios: int
    frames: int
    anomaly_frames: int
    normal_frames: int
    points: int  # valid (unmasked) points after subsampling
    anomaly_points: int
    point_classes: dict[int, int]  # class id -> count of valid points after subsampling


class AnovoxReport(BaseModel):
    """The load-time report: what was found, what was kept, what was dropped and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    root: str
    layouts: dict[str, int]  # layout name -> scenarios
    scenarios_found: int
    frames_found: int
    train: SplitStats
    val: SplitStats
    train_scenarios: list[str]
    val_scenarios: list[str]
    dropped: list[DroppedFrame]
    drop_reasons: dict[str, int]
    notes: list[str]
    anomaly_ids: list[int]
    ignore_ids: list[int]

    def summary(self) -> str:
        """A printable multi-line summary."""
        lines = [
            f"AnoVox {self.root}: {self.scenarios_found} scenarios, {self.frames_found} frames found "
            f"(layouts: {', '.join(f'{k} {v}' for k, v in sorted(self.layouts.items()))})",
        ]
        for name, s in (("train", self.train), ("val", self.val)):
            frac = s.anomaly_points / s.points if s.points else 0.0
            lines.append(
                f"  {name:5s} {s.scenarios:4d} scenarios {s.frames:6d} frames: "
                f"{s.anomaly_frames} anomaly / {s.normal_frames} normal "
                f"({s.anomaly_frames / max(s.frames, 1):.1%} anomaly); points {s.points} "
                f"({frac:.3%} anomaly)"
            )
        n_drop = sum(self.drop_reasons.values())
        lines.append(f"  dropped {n_drop} frames" + (":" if n_drop else ""))
        for kind, cnt in sorted(self.drop_reasons.items(), key=lambda kv: -kv[1]):
            example = next(d for d in self.dropped if d.kind == kind)
            lines.append(
                f"    {cnt:6d}  {kind}  (e.g. {example.scenario} frame {example.frame}: {example.detail})"
            )
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)


@dataclass
class AnovoxData:
    """The result of ``load_anovox``: train and val Frames (CPU) and the load report.

    ``train_keys`` / ``val_keys`` give, per frame, (scenario folder relative to root, frame id): the way back
    to the files. ``Frames.scenario`` indexes ``scenario_names``.
    """

    train: Frames
    val: Frames
    report: AnovoxReport
    train_keys: list[tuple[str, int]]
    val_keys: list[tuple[str, int]]
    scenario_names: list[str]
