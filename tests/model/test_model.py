"""The model file: the original's exact size, shapes, and that padding never reaches an output."""

from __future__ import annotations

import pytest
import torch

from muvo_model.model import ORIGINAL_PARAMETERS, build_model, count_parameters


def test_original_has_exactly_the_incident_parameter_count() -> None:
    assert count_parameters(build_model("original")) == ORIGINAL_PARAMETERS == 792_321


@pytest.mark.parametrize("arch", ["original", "fusion"])
def test_forward_shapes(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch)
    image, points = torch.rand(3, 3, 32, 32), torch.randn(3, 50, 4)
    out = model(image, points, torch.ones(3, 50, dtype=torch.bool))
    assert out["frame_logit"].shape == (3,)
    if arch == "fusion":
        assert out["point_logit"].shape == (3, 50)
    else:
        assert out["point_logit"] is None


def test_padded_points_never_change_outputs() -> None:
    torch.manual_seed(0)
    model = build_model("fusion", width=32).eval()
    image, points = torch.rand(4, 3, 32, 32), torch.randn(4, 64, 4) * 5
    mask = torch.rand(4, 64) < 0.6
    mask[3] = False  # a frame without a single lidar point
    a = model(image, points, mask)
    garbage = points.clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), 4) * 1e4
    b = model(image, garbage, mask)
    torch.testing.assert_close(a["frame_logit"], b["frame_logit"])
    torch.testing.assert_close(a["point_logit"][mask], b["point_logit"][mask])
    assert torch.isfinite(b["frame_logit"]).all()


def test_padding_nan_is_contained() -> None:
    torch.manual_seed(0)
    model = build_model("fusion", width=32).eval()
    image, points = torch.rand(2, 3, 32, 32), torch.randn(2, 16, 4)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[:, 8:] = False
    points[:, 8:] = float("nan")
    out = model(image, points, mask)
    assert torch.isfinite(out["frame_logit"]).all()
    assert torch.isfinite(out["point_logit"][mask]).all()


def test_unknown_arch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown arch 'big'"):
        build_model("big")  # type: ignore[arg-type]
