"""Observations: a named number at a step, the one record every evidence source produces."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Observation(BaseModel):
    """One measured or printed value.

    Names follow ``split/metric[/part]`` (see the README's signal table): ``train/loss``,
    ``grad/norm/<module>``, ``printed/<key>``, ``label/positive_fraction`` ...
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    step: int
    value: float
    # Decimal places the producer showed (printed/logged values); None for raw tensor values.
    digits: int | None = None
    # Process rank under torchrun; None for single-process runs and logs.
    rank: int | None = None
