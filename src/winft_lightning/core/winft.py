"""WinfT's attention core (SPEC 5, eq. 8-10 and the BCE of eq. 12) as autograd Functions.

Shapes: B images, H heads, T = p + N tokens (the p prefix tokens first, as timm orders them),
d head dim; ``q, k, v`` ``[B, H, T, d]``. Per block: the logits ``mean_h Q_h K_h^T`` on the
patch block (eq. 8 before the sigmoid), W (eq. 9, :func:`winft_window`), the attention and,
given the target w_gt, the BCE ``mean BCE(sigmoid(logits), w_gt)``, taken inside the block so
that no block's ``[B, N, N]`` logits wait for the loss.

"multiply" (eq. 10, ``A' = softmax(S_h * W)``, ``S_h = Q_h K_h^T / sqrt(d)``): no fused kernel
computes it, so one Function does it in plain batched matmuls. The logits are the head-sum of
the attention's own scores (no second ``Q K^T`` matmul). It keeps for the backward ``q, k, v``
(as fused SDPA does) and the bool W, no ``[B, H, T, T]`` score or probability and no
``[B, N, N]`` float: the backward recomputes the scores (one ``Q K^T`` matmul, as flash
attention's backward does) and the logits from them, and adds the BCE's gradient
``(sigmoid(logits) - w_gt) / N^2`` and any gradient of the returned logits to the scores'
gradient, so they reach Q and K through the attention's own two matmuls. Few, large ops: on a
shared CPU every op is a thread barrier.

"neg_inf" (``softmax(S_h`` masked to ``W)``), on the CPU: the flash-attention kernel that
fused SDPA runs, with W as its additive mask, and the logits' own matmul; the Function keeps
the bool W (the float mask is rebuilt for the backward; SDPA keeps the float one) and the
BCE's gradient with respect to the concatenated-head Q and K (``[B, N, H*d]``, computed in the
forward) instead of the logits.

Under autocast the matmuls run in the autocast dtype and the softmax, logits and BCE in
float32, as autocast runs the unfused code. Attention dropout is not supported (the caller
runs the unfused layer).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["WinftCore", "fused_modes", "winft_attention", "winft_logits", "winft_window"]


class WinftCore(NamedTuple):
    """:func:`winft_attention`'s result: ``out`` ``[B, H, T, d]``; ``logits`` ``[B, N, N]``
    float32 ``mean_h Q_h K_h^T`` (differentiable); ``window`` W ``[B, N, N]`` bool; ``bce``
    the scalar BCE of ``sigmoid(logits)`` against the target (None without one)."""

    out: Tensor
    logits: Tensor
    window: Tensor
    bce: Tensor | None


def winft_logits(q: Tensor, k: Tensor, num_prefix_tokens: int) -> Tensor:
    """``mean_h Q_h K_h^T`` on patch tokens (eq. 8 before the sigmoid), unscaled: ``[B, N, N]``
    float32. q, k ``[B, H, T, d]``. One matmul over the concatenated head dims, since
    ``sum_h Q_h K_h^T = Q K^T``; it runs in the input dtype (autocast) and is returned in float32
    so the sigmoid threshold and the BCE see full precision."""
    p = num_prefix_tokens
    return (_patch_heads(q, p) @ _patch_heads(k, p).transpose(1, 2)).float() / q.shape[1]


def winft_window(logits: Tensor) -> Tensor:
    """W (eq. 9): ``w' = sigmoid(logits)``, ``W[i, j] = w'[i, j] > mean_j w'[i, :]`` (strict).
    logits ``[B, N, N]`` -> bool ``[B, N, N]``."""
    w = logits.sigmoid()
    return w > w.mean(dim=-1, keepdim=True)


def fused_modes(device: torch.device) -> tuple[str, ...]:
    """The modes :func:`winft_attention` runs on ``device``: "neg_inf" needs the CPU's
    flash-attention kernel (elsewhere the unfused layer runs it through SDPA)."""
    return ("multiply", "neg_inf") if device.type == "cpu" else ("multiply",)


def winft_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    num_prefix_tokens: int,
    scale: float,
    mode: str = "multiply",
    target: Tensor | None = None,
) -> WinftCore:
    """WinfT attention of q, k, v ``[B, H, T, d]`` (``scale`` = 1/sqrt(d)); ``mode``
    "multiply" (eq. 10) or "neg_inf" (one of :func:`fused_modes`); ``target`` ``[B, N, N]``
    float32 (w_gt) or None. See the module docstring."""
    if mode not in fused_modes(q.device):
        raise ValueError(f"mode {mode!r} has no fused core on {q.device.type}")
    device = q.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else q.dtype
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    function = _MultiplyAttention if mode == "multiply" else _NegInfAttention
    with torch.autocast(device, enabled=False):
        out, logits, window, bce = function.apply(q, k, v, target, num_prefix_tokens, scale)
    return WinftCore(out, logits, window, bce)


def _scores(q3: Tensor, k3: Tensor, b: int, p: int, scale: float) -> tuple[Tensor, Tensor]:
    """Scaled scores ``scale * Q K^T`` ``[B, H, T, T]`` of q3, k3 ``[B*H, T, d]`` and their
    patch block ``[B, H, N, N]`` (a view)."""
    s = _matmul(q3, k3.transpose(1, 2), scale)
    s = s.view(b, -1, *s.shape[1:])
    return s, s[:, :, p:, p:]


def _matmul(a: Tensor, b: Tensor, alpha: float = 1.0) -> Tensor:
    """``alpha * a @ b`` of ``[n, i, k]`` and ``[n, k, j]`` in one batched matmul."""
    out = a.new_empty(a.shape[0], a.shape[1], b.shape[2])
    return torch.baddbmm(out, a, b, beta=0.0, alpha=alpha)


def _softmax_(s: Tensor) -> Tensor:
    """float32 softmax over the last dim, in place when ``s`` is float32."""
    if s.dtype == torch.float32:
        return torch.softmax(s, -1, out=s)
    return s.float().softmax(-1)


def _softmax_backward_(dp: Tensor, prob: Tensor) -> Tensor:
    """``prob * (dp - sum(prob * dp))`` over the last dim, float32, in place into ``dp`` when
    it is float32."""
    dp = dp.float()
    return torch.ops.aten._softmax_backward_data.out(dp, prob, -1, torch.float32, grad_input=dp)


class _MultiplyAttention(torch.autograd.Function):
    """eq. 10 in batched matmuls: ``(q, k, v, target, p, scale) -> (out, logits, W, bce)``."""

    @staticmethod
    def forward(ctx, q, k, v, target, p, scale):
        b, h, t, d = q.shape
        q3, k3, v3 = torch.stack((q, k, v)).view(3, b * h, t, d)  # one copy of the three
        s, sp = _scores(q3, k3, b, p, scale)
        logits = sp.sum(1, dtype=torch.float32).div_(h * scale)
        sig = logits.sigmoid()
        window = sig > sig.mean(dim=-1, keepdim=True)  # eq. 9, as winft_window
        sp.mul_(window.to(sp.dtype).unsqueeze(1))  # eq. 10 (a float W: the faster kernel)
        out = torch.bmm(_softmax_(s).to(v.dtype).view(b * h, t, t), v3)
        bce = None if target is None else F.binary_cross_entropy_with_logits(logits, target)
        ctx.save_for_backward(q3, k3, v3, window, target)
        ctx.config = (b, p, scale)
        ctx.mark_non_differentiable(window)
        return out.view(b, h, t, d), logits, window, bce

    @staticmethod
    def backward(ctx, d_out, d_logits, _d_window, d_bce):
        q3, k3, v3, window, target = ctx.saved_tensors
        b, p, scale = ctx.config
        bh, t, d = q3.shape
        h = bh // b
        s, sp = _scores(q3, k3, b, p, scale)
        residual = None  # N^2 * d BCE / d logits = sigmoid(logits) - w_gt
        if target is not None and d_bce is not None:
            residual = sp.sum(1, dtype=torch.float32).div_(h * scale).sigmoid_().sub_(target)
        w = window.to(sp.dtype).unsqueeze(1)
        sp.mul_(w)
        prob = _softmax_(s).view(bh, t, t)
        d_out3 = d_out.reshape(bh, t, d)
        dv = torch.bmm(prob.to(v3.dtype).transpose(1, 2), d_out3)
        ds = _softmax_backward_(torch.bmm(d_out3, v3.transpose(1, 2)), prob)
        del s, sp, prob  # [B*H, T, T]: not alive beside the next one
        dsp = ds.view(b, h, t, t)[:, :, p:, p:]
        g = _logits_grad(residual, d_bce, d_logits, 1.0 / (h * scale))
        # W-masked scores are constants (0): no gradient there; the logits' reaches all
        if g is not None and not torch.compiler.is_compiling():
            torch.addcmul(g, dsp, w.float(), out=dsp)  # one pass; dynamo: no out=
        else:
            dsp.mul_(w.float())
            if g is not None:
                dsp.add_(g)
        ds = ds.to(q3.dtype)
        dq = _matmul(ds, k3, scale)
        dk = _matmul(ds.transpose(1, 2), q3, scale)
        shape = (b, h, t, d)
        return dq.view(shape), dk.view(shape), dv.view(shape), None, None, None, None


def _logits_grad(residual, d_bce, d_logits, to_scores: float) -> Tensor | None:
    """Gradient reaching each head's scores from the logits, ``[B, 1, N, N]`` float32: the
    BCE's ``(sigmoid(logits) - w_gt) * d_bce / N^2`` plus any gradient of the returned logits,
    times ``to_scores`` = d logits / d S_h; None when neither flows."""
    g = None
    if residual is not None and d_bce is not None:
        g = residual.mul_(d_bce * (to_scores / residual.numel()))
    if d_logits is not None:
        g = d_logits * to_scores if g is None else g.add_(d_logits, alpha=to_scores)
    return None if g is None else g.unsqueeze(1)


_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _patch_heads(x: Tensor, p: int) -> Tensor:
    """``[B, H, T, d]`` -> the patch rows with the heads concatenated ``[B, N, H*d]``."""
    b, h, t, d = x.shape
    return x[:, :, p:].transpose(1, 2).reshape(b, t - p, h * d)


def _additive_mask(window: Tensor, p: int, dtype: torch.dtype) -> Tensor:
    """W ``[B, N, N]`` bool -> the kernel's mask ``[B, 1, T, T]``: 0 where attending (prefix
    rows and columns too), the dtype's lowest value elsewhere (its exp() is 0, as -inf's, since
    every row keeps its prefix columns; cheaper to make than SDPA's ``where(W, 0, -inf)``)."""
    b, n, _ = window.shape
    mask = torch.zeros(b, 1, n + p, n + p, dtype=dtype, device=window.device)
    wf = mask[:, 0, p:, p:]
    wf.copy_(window).sub_(1).mul_(-torch.finfo(dtype).min)
    return mask


class _NegInfAttention(torch.autograd.Function):
    """W as the CPU flash kernel's mask: ``(q, k, v, target, p, scale) -> (out, logits, W,
    bce)``."""

    @staticmethod
    def forward(ctx, q, k, v, target, p, scale):
        h = q.shape[1]
        qc, kc = _patch_heads(q, p), _patch_heads(k, p)
        logits = torch.bmm(qc, kc.transpose(1, 2)).float().div_(h)  # as winft_logits
        sig = logits.sigmoid()
        window = sig > sig.mean(dim=-1, keepdim=True)  # eq. 9, as winft_window
        mask = _additive_mask(window, p, q.dtype)
        out, lse = _FLASH(q, k, v, attn_mask=mask, scale=scale)
        bce = dq_c = dk_c = None
        if target is not None:
            bce = F.binary_cross_entropy_with_logits(logits, target)
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                # d BCE / d (Q_c K_c^T), times Q_c and K_c: [B, N, H*d], not the [B, N, N]
                g = sig.sub_(target).div_(target.numel() * h).to(qc.dtype)
                dq_c, dk_c = _through_logits(g, qc, kc)
        ctx.save_for_backward(q, k, v, out, lse, window, dq_c, dk_c)
        ctx.config = (p, scale)
        ctx.mark_non_differentiable(window)
        return out, logits, window, bce

    @staticmethod
    def backward(ctx, d_out, d_logits, _d_window, d_bce):
        q, k, v, out, lse, window, dq_c, dk_c = ctx.saved_tensors
        p, scale = ctx.config
        b, h, t, d = q.shape
        mask = _additive_mask(window, p, q.dtype)  # rebuilt: 4x smaller kept as bool
        dq, dk, dv = _FLASH_BACKWARD(
            d_out, q, k, v, out, lse, 0.0, False, attn_mask=mask, scale=scale
        )
        if dq_c is not None and d_bce is not None:
            dq_c, dk_c = dq_c * d_bce, dk_c * d_bce
        else:
            dq_c = dk_c = None
        if d_logits is not None:  # the returned logits' own gradient, through Q_c K_c^T / H
            g = (d_logits / h).to(q.dtype)
            dq_l, dk_l = _through_logits(g, _patch_heads(q, p), _patch_heads(k, p))
            dq_c = dq_l if dq_c is None else dq_c.add_(dq_l)
            dk_c = dk_l if dk_c is None else dk_c.add_(dk_l)
        if dq_c is not None:
            dq[:, :, p:] += dq_c.view(b, t - p, h, d).transpose(1, 2)
            dk[:, :, p:] += dk_c.view(b, h, d, t - p).transpose(-1, -2)
        return dq, dk, dv, None, None, None


def _through_logits(g: Tensor, qc: Tensor, kc: Tensor) -> tuple[Tensor, Tensor]:
    """A gradient g ``[B, N, N]`` of ``Q_c K_c^T`` -> those of Q_c ``[B, N, H*d]`` and of
    K_c, the latter as ``[B, H*d, N]`` (``Q_c^T g``: the fast layout of the matmul; ``g^T Q_c``
    with a transposed g ran 3x slower on the CPU)."""
    return torch.bmm(g, kc), torch.bmm(qc.transpose(1, 2), g)
