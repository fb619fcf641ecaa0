"""The original architecture, computed faster: the same parameters and the same function, re-associated.

``FoldedOriginal(model)`` wraps an ``OriginalModel`` and evaluates its forward pass with the linear algebra
rearranged so that no 256-wide per-point tensor is ever built. Training through it updates the wrapped
model's own parameters (its state_dict is the original's); outputs and gradients match the module path to
floating-point rounding (tests/model/test_fastpath.py checks both in float64).

Why it is exact. In the original forward, with per-point features ``h`` (N, P, 128) after the second ReLU:
    pts   = h W3^T + b3                                  (N, P, 256)  last point-MLP layer
    q     = pts Wq^T + bq = h (Wq W3)^T + (Wq b3 + bq)   (N, P, 256)  attention queries
    s_h   = q_h k_h^T / sqrt(64)                         (N, P, 16)   scores of head h over 16 image tokens
    att   = concat_h(softmax(s_h) v_h) Wo^T + bo          (N, P, 256)
and only ``att.mean(dim=1)`` and ``pts.mean(dim=1)`` reach the head. Means commute with the linear maps:
    mean_P(att) = concat_h(mean_P(softmax(s_h)) v_h) Wo^T + bo,    mean_P(pts) = mean_P(h) W3^T + b3,
and the scores need only ``h @ M_h`` with ``M_h = (Wq W3)_h^T k_h^T / 8`` (N, 128, 16) per frame.
Cost: the per-point work falls from ~1.9 GFLOP to ~0.14 GFLOP per frame forward (P = 4096), and the
(N, P, 256) activations (pts, q, attention output: ~6 MB per frame in bf16) are never written.

Two further options, each exact in the same sense (tests/model/test_fastpath.py checks them in float64):
- ``s2d_stem``: the first block (conv 3->32, 3x3, pad 1; ReLU; 2x2 max-pool) computed by space-to-depth
  (``s2d_stem`` below): a 3-channel convolution, which tensor cores serve badly and cuDNN pads on every
  call, becomes a 12- or 16-channel one over the half-resolution grid, and the max-pool a reduction over
  4 adjacent channels without int64 indices.
- ``relu_after_pool``: the ReLU + 2x2 max-pool pairs outside that stem evaluated as max-pool, then ReLU (ReLU is
  monotone, so max and ReLU commute in value; where the window's maximum is <= 0 the gradient is 0 both
  ways, elsewhere it goes to the same element): the ReLU and its backward touch a quarter of the elements.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from muvo_model.model import OriginalModel


def s2d_weight_index(out_channels: int, in_channels: int, image_channels: int) -> torch.Tensor:
    """Where each weight of the space-to-depth convolution comes from, for ``s2d_stem``.

    Returns an int64 tensor (4 * out_channels, 4 * image_channels, 3, 3) indexing ``w`` (out_channels,
    in_channels, 3, 3) flattened with one zero appended (index ``w.numel()``), for images with
    ``image_channels >= in_channels`` channels (the extra ones meet that zero). With output channel
    ``k*4 + a*2 + b`` (pixel (a, b) of each 2x2 cell) and input channel ``c*4 + i*2 + j`` (F.pixel_unshuffle's
    order), ``W'[k*4+a*2+b, c*4+i*2+j, P+1, Q+1] = w[k, c, dy, dx]`` where ``2P + i = a + dy - 1`` and
    ``2Q + j = b + dx - 1``: the original tap at row offset ``dy - 1`` from output row ``2U + a`` reads input
    row ``2(U + P) + i``. Each weight appears 4 times (once per (a, b)); 3/4 of W' are structural zeros.
    """
    if image_channels < in_channels:
        raise ValueError(
            f"s2d stem: images have {image_channels} channels, the convolution wants {in_channels}"
        )
    zero = out_channels * in_channels * 9
    flat = torch.arange(zero).view(out_channels, in_channels, 3, 3)
    index = torch.full((out_channels, 2, 2, image_channels, 2, 2, 3, 3), zero, dtype=torch.long)
    for a in range(2):
        for dy in range(3):
            p, i = divmod(a + dy - 1, 2)  # floor division: a + dy - 1 = -1 gives P = -1, i = 1
            for b in range(2):
                for dx in range(3):
                    q, j = divmod(b + dx - 1, 2)
                    index[:, a, b, :in_channels, i, j, p + 1, q + 1] = flat[:, :, dy, dx]
    return index.view(4 * out_channels, 4 * image_channels, 3, 3)


def s2d_stem(
    image: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """``F.max_pool2d(F.relu(F.conv2d(image, weight, bias, padding=1)), 2)`` by space-to-depth.

    ``image`` (N, C, H, W) with H and W even; ``index`` from ``s2d_weight_index(out, in, C)``. The 2x2 cells
    become channels (N, 4C, H/2, W/2); the convolution's output, pixel-unshuffled the same way, is a 3x3,
    pad-1 convolution of that grid with the weight W' gathered from ``weight`` (so autograd sums W'.grad
    back onto ``weight``) and the bias repeated 4 times; the max-pool is then the maximum over the 4
    channels of each output channel's cell, and ReLU follows it (they commute). Returns (N, out, H/2, W/2),
    channels_last in memory.

    Ties: ``amax`` splits a tied maximum's gradient evenly where ``nn.MaxPool2d`` gives it all to the first
    element. The weight gradient is the same wherever the tied outputs come from identical input patches (a
    flat image region): each share multiplies the same patch. Ties between different patches are a
    coincidence of rounding, and either rule is a valid subgradient there.
    """
    n, c, h, w = image.shape
    if h % 2 or w % 2:
        raise ValueError(f"s2d stem: image height and width must be even, got {h}x{w} (use s2d_stem=False)")
    if c < weight.shape[1] or index.shape[1] != 4 * c:
        raise ValueError(
            f"s2d stem: images have {c} channels; the convolution wants {weight.shape[1]} and the index was "
            f"built for {index.shape[1] // 4}"
        )
    flat = torch.cat([weight.reshape(-1), weight.new_zeros(1)])
    y = F.conv2d(F.pixel_unshuffle(image, 2), flat[index], bias.repeat_interleave(4), padding=1)
    # (N, 4*out, H/2, W/2) -> NHWC view -> max over each output channel's 4 adjacent sub-pixels: in
    # channels_last memory (what the training step uses) the reduction reads contiguous groups of 4.
    pooled = y.permute(0, 2, 3, 1).unflatten(-1, (weight.shape[0], 4)).amax(dim=-1)  # (N, H/2, W/2, out)
    return F.relu(pooled.permute(0, 3, 1, 2))


def s2d_images(image: torch.Tensor) -> torch.Tensor:
    """Images as the s2d stem runs fastest on them: a 4th, zero channel (16 space-to-depth channels, whose
    weights for it are structural zeros), bf16, channels_last. Convert a training set once, not per step: on
    the H200 the stem took 36.0 ms a step at batch 1024 this way and 53.1 ms with fp32 3-channel images
    (bench/step_variants.py, bench/RESULTS.md)."""
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"s2d_images: expected (N, 3, H, W) images, got shape {tuple(image.shape)}")
    padded = F.pad(image, (0, 0, 0, 0, 0, 1)).to(torch.bfloat16)
    return padded.contiguous(memory_format=torch.channels_last)


def _conv_relu_pool(conv: nn.Module, x: torch.Tensor, relu_after_pool: bool) -> torch.Tensor:
    y = conv(x)
    return F.relu(F.max_pool2d(y, 2)) if relu_after_pool else F.max_pool2d(F.relu(y), 2)


def encode_image(
    seq: nn.Sequential, image: torch.Tensor, *, s2d_index: torch.Tensor | None, relu_after_pool: bool
) -> torch.Tensor:
    """The original image encoder's function (``model.image_encoder``, a ``muvo_model.model.image_encoder``)
    with the first block by space-to-depth when ``s2d_index`` is given (see ``s2d_stem``) and/or max-pool
    before ReLU elsewhere: (N, C, H, W) -> (N, 128, 4, 4)."""
    c1, c2, c3 = seq[0], seq[3], seq[6]
    if s2d_index is not None:
        h = s2d_stem(image, c1.weight, c1.bias, s2d_index)
    else:
        h = _conv_relu_pool(c1, image, relu_after_pool)
    h = _conv_relu_pool(c2, h, relu_after_pool)
    return seq[8](seq[7](c3(h)))  # ReLU, adaptive average pool to 4x4


class FoldedOriginal(nn.Module):
    """Evaluate ``OriginalModel`` with the point-side algebra folded (see the module docstring).

    Args:
        model: the wrapped model; its parameters are trained, its state_dict is this module's.
        s2d_stem: the first conv + ReLU + max-pool by space-to-depth (images of 3 channels, or 4 whose 4th
            is ignored: its weights are structural zeros; even height and width). Experimental, off by
            default: exact in float64 (eager and compiled, CPU), but under torch.compile on an H200
            (torch 2.11, bf16) training left non-finite parameters within 10 steps, while the same stem
            eager and the compiled module stem did not (bench/RESULTS.md). Not understood yet.
        relu_after_pool: ReLU after the other 2x2 max-pools instead of before (no speed change measured).
    """

    def __init__(
        self, model: OriginalModel, *, s2d_stem: bool = False, relu_after_pool: bool = False
    ) -> None:
        super().__init__()
        if not isinstance(model, OriginalModel):
            raise TypeError(f"FoldedOriginal wraps an OriginalModel, got {type(model).__name__}")
        mha = model.cross_attention
        if mha.dropout != 0.0 or mha.in_proj_weight is None or not mha.batch_first:
            raise ValueError(
                "FoldedOriginal needs the original attention: packed in_proj, no dropout, batch_first"
            )
        self.model = model
        self.relu_after_pool = relu_after_pool
        self.s2d_index: torch.Tensor | None
        conv = model.image_encoder[0]
        # Not persistent: the state_dict stays the wrapped model's. Built for 4-channel images; a 3-channel
        # image uses its first 12 input channels (the 4th image channel's are the last 4).
        index = s2d_weight_index(conv.out_channels, conv.in_channels, 4) if s2d_stem else None
        self.register_buffer("s2d_index", None if index is None else index.to(conv.weight.device), False)

    def forward(
        self, image: torch.Tensor, points: torch.Tensor, point_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | None]:
        m = self.model
        mha = m.cross_attention
        heads, d = mha.num_heads, mha.embed_dim
        hd = d // heads
        index = self.s2d_index
        if index is not None:
            index = index[:, : 4 * image.shape[1]]
        if index is None and not self.relu_after_pool:
            img = m.image_encoder(image)  # (N, 128, 4, 4)
        else:
            img = encode_image(m.image_encoder, image, s2d_index=index, relu_after_pool=self.relu_after_pool)
        img = img.flatten(2).transpose(1, 2)  # (N, 16, 128)
        img = F.pad(img, (0, d - img.shape[-1]))  # (N, 16, 256), as the original
        enc = m.point_encoder
        h = enc[3](enc[2](enc[1](enc[0](points))))  # (N, P, 128): Linear, ReLU, Linear, ReLU
        last = enc[4]  # Linear(128, 256): folded, never applied per point
        wq, wk, wv = mha.in_proj_weight.split(d)  # (256, 256) each
        bq, bk, bv = mha.in_proj_bias.split(d)
        k = F.linear(img, wk, bk)  # (N, 16, 256)
        v = F.linear(img, wv, bv)  # (N, 16, 256)
        a = wq @ last.weight  # (256, 128) = Wq W3
        c = wq @ last.bias + bq  # (256,)
        n, t = k.shape[0], k.shape[1]
        kh = k.view(n, t, heads, hd)  # (N, 16, H, 64)
        scale = 1.0 / math.sqrt(hd)
        # M[n, :, h*16 + j] = (Wq W3)_h^T k_{n,h,j} / 8 ; bias[n, h*16 + j] = c_h . k_{n,h,j} / 8
        mm = torch.einsum("hec,nthe->ncht", a.view(heads, hd, -1), kh).reshape(n, -1, heads * t) * scale
        bias = torch.einsum("he,nthe->nht", c.view(heads, hd), kh).reshape(n, 1, heads * t) * scale
        scores = torch.baddbmm(bias, h, mm)  # (N, P, H*16)
        probs = scores.view(n, -1, heads, t).softmax(dim=-1).mean(dim=1)  # (N, H, 16)
        att = torch.einsum("nht,nthe->nhe", probs.to(v.dtype), v.view(n, t, heads, hd)).reshape(n, d)
        att = mha.out_proj(att)  # (N, 256) = mean over points of the attention output
        pts = last(h.mean(dim=1))  # (N, 256) = mean over points of the last MLP layer
        fused = torch.cat([att, pts], dim=-1)  # (N, 512)
        return {"frame_logit": m.anomaly_head(fused).squeeze(-1), "point_logit": None}
