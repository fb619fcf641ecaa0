import pytest
import torch
import torch.nn.functional as F

from muvo_model.fastpath import FoldedOriginal, encode_image, s2d_images, s2d_stem, s2d_weight_index
from muvo_model.model import build_model, image_encoder


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


def _image_with_flat_regions(n=2, size=16, channels=3, seed=3):
    """Random pixels, with a flat block and a flat stripe: tied max-pool windows from identical patches."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, channels, size, size, generator=g, dtype=torch.float64)
    image[:, :, 2:10, 4:12] = 0.7
    image[:, :, :, 13:] = 0.2
    return image


def _grads_of(model, run):
    model.zero_grad()
    out = run()
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("relu_after_pool", [False, True])
def test_s2d_encoder_matches_the_module_encoder_outputs_and_all_gradients(channels, relu_after_pool):
    torch.manual_seed(1)
    seq = image_encoder(128, 4).double()
    image = _image_with_flat_regions(channels=channels)
    if channels == 4:
        image[:, 3] = torch.rand_like(image[:, 3])  # the 4th channel is ignored, whatever it holds
    index = s2d_weight_index(32, 3, channels)
    ref, ref_grads = _grads_of(seq, lambda: seq(image[:, :3]))
    out, grads = _grads_of(
        seq, lambda: encode_image(seq, image, s2d_index=index, relu_after_pool=relu_after_pool)
    )
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    assert set(grads) == {k for k, _ in seq.named_parameters()}  # conv1 weight and bias included
    for k, g in ref_grads.items():
        assert grads[k].shape == g.shape, k
        torch.testing.assert_close(grads[k], g, rtol=1e-8, atol=1e-12, msg=k)


def test_s2d_stem_equals_conv_relu_maxpool_on_a_constant_image():
    # Every window ties (identical patches away from the border): maxpool and amax route the gradient
    # differently, the weight and bias gradients must not differ.
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(3, 32, 3, padding=1).double()
    image = torch.full((1, 3, 8, 8), 0.5, dtype=torch.float64)
    ref, ref_grads = _grads_of(conv, lambda: F.max_pool2d(F.relu(conv(image)), 2))
    out, grads = _grads_of(conv, lambda: s2d_stem(image, conv.weight, conv.bias, s2d_weight_index(32, 3, 3)))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for k, g in ref_grads.items():
        torch.testing.assert_close(grads[k], g, rtol=1e-8, atol=1e-12, msg=k)


@pytest.mark.parametrize("options", [{"s2d_stem": True}, {"s2d_stem": True, "relu_after_pool": True}])
def test_folded_original_with_s2d_matches_the_module_path_outputs_and_gradients(options):
    torch.manual_seed(0)
    model = build_model("original").double().eval()
    image, points = _inputs(seed=4)
    image[:, :, 8:20, 8:20] = 0.3  # a flat region
    ref, ref_grads = _grads_of(model, lambda: model(image, points)["frame_logit"])
    fast = FoldedOriginal(model, **options)
    assert list(fast.state_dict()) == [f"model.{k}" for k in model.state_dict()]
    for img in (image, F.pad(image, (0, 0, 0, 0, 0, 1))):  # 3 channels, and 4 with the 4th zero
        out, grads = _grads_of(model, lambda img=img: fast(img, points)["frame_logit"])
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
        assert set(grads) == set(ref_grads)
        for k, g in ref_grads.items():
            torch.testing.assert_close(grads[k], g, rtol=1e-8, atol=1e-12, msg=k)


def test_s2d_stem_in_bf16_autocast_and_channels_last_is_close_to_fp32():
    torch.manual_seed(0)
    model = build_model("original").to(memory_format=torch.channels_last)
    image, points = (t.float() for t in _inputs(n=2, size=32, seed=5))
    ref = model.image_encoder(image)
    fast = FoldedOriginal(model, s2d_stem=True)
    image4 = F.pad(image, (0, 0, 0, 0, 0, 1)).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encode_image(model.image_encoder, image4, s2d_index=fast.s2d_index, relu_after_pool=False)
        logit = fast(image4, points)["frame_logit"]
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert torch.isfinite(out).all() and torch.isfinite(logit).all()
    # bf16 keeps 8 significant bits; three convolutions deep the error was ~0.5% of the scale here.
    torch.testing.assert_close(out.float(), ref, rtol=0.02, atol=0.02 * ref.abs().max().item())
    logit.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_s2d_stem_rejects_odd_images_with_a_message():
    conv = torch.nn.Conv2d(3, 32, 3, padding=1)
    with pytest.raises(ValueError, match="even, got 15x16"):
        s2d_stem(torch.rand(1, 3, 15, 16), conv.weight, conv.bias, s2d_weight_index(32, 3, 3))


def test_s2d_images_feed_the_s2d_model_as_the_original_images_feed_the_module():
    torch.manual_seed(3)
    model = build_model("original").eval()
    image, points = torch.rand(2, 3, 32, 32), torch.randn(2, 64, 4)
    held = s2d_images(image)
    assert held.shape == (2, 4, 32, 32) and held.dtype == torch.bfloat16
    assert held.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(held[:, 3], torch.zeros_like(held[:, 3]))
    with torch.no_grad():
        want = model(image.to(torch.bfloat16).float(), points)["frame_logit"]  # the same bf16-rounded pixels
        got = FoldedOriginal(model, s2d_stem=True)(held.float(), points)["frame_logit"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"expected \(N, 3, H, W\)"):
        s2d_images(held)
