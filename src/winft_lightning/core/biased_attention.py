"""Attention whose logits carry a learned per-head slope times a fixed ``[T, T]`` matrix (the
local family's distance bias, models/distance.py), without SDPA's math path.

Given the bias as a float ``attn_mask`` that needs a gradient, torch's CPU SDPA leaves its fused
kernel for the math path, which keeps the ``[B, H, T, T]`` probabilities for the backward (1.8x
a teacher's step at N = 196, ``bench.distance_cost``). :func:`slope_biased_attention` runs the
fused kernel forward (no probabilities kept) and the backward by hand, a few images at a time so
that each chunk's ``[b, H, T, T]`` floats stay in cache:

    S = q k^T / sqrt(d) - slope_h D,   P = softmax(S),   dV = P^T dO,   dP = dO V^T,
    dS = P * (dP - delta),   delta_bhi = sum_j P_bhij dP_bhij = dO_bhi . O_bhi,
    dq = dS k / sqrt(d),   dk = dS^T q / sqrt(d),   dslope_h = - sum_{b,i,j} dS_bhij D_ij.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["slope_biased_attention"]

# the chunk of images whose [b, H, T, T] logits the backward recomputes at once (1 MiB of
# float32: measured as fast as larger chunks at N = 64 and N = 196)
CHUNK_ELEMENTS = 1 << 18


def _bias(slopes: Tensor, matrix: Tensor, dtype: torch.dtype) -> Tensor:
    """``[1, H, T, T]``: ``-slopes_h * matrix``."""
    return (-slopes.view(1, -1, 1, 1) * matrix).to(dtype)


class _SlopeBiasedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, slopes: Tensor, matrix: Tensor) -> Tensor:
        bias = _bias(slopes.detach(), matrix, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        ctx.save_for_backward(q, k, v, out, slopes, matrix)
        return out

    @staticmethod
    def backward(ctx, d_out: Tensor):
        q, k, v, out, slopes, matrix = ctx.saved_tensors
        bias = _bias(slopes.detach(), matrix, q.dtype)
        b, h, t, d = q.shape
        scale = d**-0.5
        delta = (d_out * out).sum(-1, keepdim=True)  # [B, H, T, 1]
        dq, dk, dv = (torch.empty(b, h, t, d, dtype=q.dtype, device=q.device) for _ in "qkv")
        acc_dtype = torch.promote_types(q.dtype, torch.float32)  # float32, or float64
        acc = torch.zeros(h, dtype=acc_dtype, device=q.device)
        step = max(1, CHUNK_ELEMENTS // (h * t * t))
        for s in range(0, b, step):
            c = slice(s, s + step)
            p = torch.softmax(q[c] @ k[c].transpose(-2, -1) * scale + bias, dim=-1)
            dv[c] = p.transpose(-2, -1) @ d_out[c]
            ds = p.mul_(d_out[c] @ v[c].transpose(-2, -1) - delta[c])  # P is spent
            dq[c] = ds @ k[c] * scale
            dk[c] = ds.transpose(-2, -1) @ q[c] * scale
            if ctx.needs_input_grad[3]:
                acc -= (ds * matrix).sum((0, 2, 3), dtype=acc_dtype)
        d_slopes = acc.to(slopes.dtype) if ctx.needs_input_grad[3] else None
        return dq, dk, dv, d_slopes, None


def slope_biased_attention(
    q: Tensor, k: Tensor, v: Tensor, slopes: Tensor, matrix: Tensor
) -> Tensor:
    """``softmax(q k^T / sqrt(d) - slopes_h * matrix) v`` per head, no dropout.

    q, k, v: ``[B, H, T, d]``; slopes: ``[H]`` (may need a gradient); matrix: ``[T, T]``, held
    constant. Returns ``[B, H, T, d]``: the values and gradients of
    ``F.scaled_dot_product_attention(q, k, v, attn_mask=-slopes.view(1, H, 1, 1) * matrix)``,
    up to rounding, without its math path (module docstring)."""
    if q.dim() != 4 or slopes.shape != (q.shape[1],) or matrix.shape != (q.shape[2],) * 2:
        raise ValueError(
            f"slope_biased_attention: q {tuple(q.shape)}, slopes {tuple(slopes.shape)}, "
            f"matrix {tuple(matrix.shape)}; want [B, H, T, d], [H], [T, T]"
        )
    return _SlopeBiasedAttention.apply(q, k, v, slopes, matrix)
