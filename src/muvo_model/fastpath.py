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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from muvo_model.model import OriginalModel


class FoldedOriginal(nn.Module):
    """Evaluate ``OriginalModel`` with the point-side algebra folded (see the module docstring)."""

    def __init__(self, model: OriginalModel) -> None:
        super().__init__()
        if not isinstance(model, OriginalModel):
            raise TypeError(f"FoldedOriginal wraps an OriginalModel, got {type(model).__name__}")
        mha = model.cross_attention
        if mha.dropout != 0.0 or mha.in_proj_weight is None or not mha.batch_first:
            raise ValueError(
                "FoldedOriginal needs the original attention: packed in_proj, no dropout, batch_first"
            )
        self.model = model

    def forward(
        self, image: torch.Tensor, points: torch.Tensor, point_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | None]:
        m = self.model
        mha = m.cross_attention
        heads, d = mha.num_heads, mha.embed_dim
        hd = d // heads
        img = m.image_encoder(image).flatten(2).transpose(1, 2)  # (N, 16, 128)
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
