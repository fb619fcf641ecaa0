import pytest
import torch

from muvo_model.fastpath import FoldedOriginal
from muvo_model.model import build_model


def _inputs(n=3, p=50, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 3, size, size, generator=g, dtype=torch.float64)
    points = torch.randn(n, p, 4, generator=g, dtype=torch.float64) * 5
    return image, points


def test_folded_original_matches_the_module_path_outputs_and_gradients():
    torch.manual_seed(0)
    model = build_model("original").double().eval()  # eval: dropout off, so both paths are deterministic
    fast = FoldedOriginal(model)
    image, points = _inputs()
    ref = model(image, points)["frame_logit"]
    ref.sum().backward()
    ref_grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    out = fast(image, points)["frame_logit"]
    out.sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    assert set(ref_grads) == {k for k, p in model.named_parameters() if p.grad is not None}
    for k, g in ref_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[k].grad, g, rtol=1e-8, atol=1e-12, msg=k)


def test_folded_original_shares_the_wrapped_parameters():
    model = build_model("original")
    fast = FoldedOriginal(model)
    assert {id(p) for p in fast.parameters()} == {id(p) for p in model.parameters()}
    assert list(fast.state_dict()) == [f"model.{k}" for k in model.state_dict()]


def test_folded_original_rejects_other_models():
    with pytest.raises(TypeError, match="OriginalModel"):
        FoldedOriginal(build_model("fusion"))
