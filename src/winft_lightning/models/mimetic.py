"""Mimetic initialisation of a timm ViT's attention (Trockman & Kolter, ICML 2023, "Mimetic
Initialization of Self-Attention Layers"; docs/SPEC.md 10, "a regime where locality exists").

Per block, with d the width, k the head dimension and each Z an independent ``[d, d]`` Gaussian
of entries N(0, 1/d) (so its spread is 1/sqrt(d)):

- per head h, ``W_q^h W_k^hT`` is the best rank-k approximation of ``alpha1 Z_h + beta1 I``
  (its SVD ``U S V^T`` truncated to the k largest singular values: ``W_q^h = U_k sqrt(S_k)``,
  ``W_k^h = V_k sqrt(S_k)``), times ``qk_scale`` (split as sqrt over the two factors);
- over the layer, ``W_v W_proj = alpha2 Z - beta2 I`` exactly (full rank: ``W_v`` is the heads'
  ``[d, d]`` concatenation, ``W_proj`` the ``[d, d]`` output projection), as the paper does;
- the position embedding is timm's 2-D sin-cos (``build_sincos2d_pos_embed``), the prefix
  tokens' (class, registers) slots zero.

Here ``W_q^h`` is ``[d, k]`` acting on row tokens (``q = x W_q``): timm's ``qkv.weight`` rows
``h k .. (h + 1) k`` transposed. Biases, norms, MLPs, the patch embedding and the class token
keep their timm initialisation; the architecture and its state-dict keys are unchanged. Every
draw comes from the given ``torch.Generator`` (on the CPU, float64): the global RNG is
untouched. Cost: a batched SVD of the heads' ``[d, d]`` targets and one more per block
(ViT-B/16: 10-40 s a block on 2 shared CPU cores).
"""

from __future__ import annotations

import math

import torch
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from torch import Tensor, nn

__all__ = ["INITS", "mimetic_factors", "mimetic_init_", "sincos_pos_embed"]

INITS = ("default", "mimetic")


def mimetic_factors(
    dim: int, rank: int, alpha: float, beta: float, generator: torch.Generator, count: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    """``count`` independent draws ``(left [count, d, rank], right [count, d, rank], target
    [count, d, d])``, float64 on the CPU: ``target = alpha Z + beta I`` with Z of entries
    N(0, 1/d) (one ``randn [count, d, d]`` from ``generator``), and ``left @ right^T`` its best
    rank-``rank`` approximation (SVD ``U S V^T``: ``left = U_r sqrt(S_r)``, ``right = V_r
    sqrt(S_r)``; exactly ``target`` when ``rank = dim``)."""
    if not 1 <= rank <= dim:
        raise ValueError(f"rank must be in 1..{dim}, got {rank}")
    z = torch.randn(count, dim, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim)
    target = alpha * z + beta * torch.eye(dim, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(target)  # batched: one call for every head of a block
    root = s[:, None, :rank].sqrt()
    return u[..., :rank] * root, vh[:, :rank].mT * root, target


def sincos_pos_embed(model: nn.Module) -> Tensor:
    """timm's 2-D sin-cos position embedding for ``model``'s grid, shaped like its
    ``pos_embed`` ``[1, P + N, C]`` (P = the prefix slots it carries, zero; row-major patches)."""
    grid = tuple(int(g) for g in model.patch_embed.grid_size)
    dim = int(model.pos_embed.shape[-1])
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embeddings need a width divisible by 4, got {dim}")
    patches = build_sincos2d_pos_embed(list(grid), dim=dim).to(torch.float64)
    prefix = int(model.pos_embed.shape[1]) - patches.shape[0]
    if prefix < 0:
        raise ValueError(f"pos_embed {tuple(model.pos_embed.shape)} is smaller than grid {grid}")
    return torch.cat([patches.new_zeros(prefix, dim), patches])[None]


@torch.no_grad()
def _init_attention(attn: nn.Module, coefs: tuple[float, ...], generator: torch.Generator) -> None:
    """One timm ``Attention``'s qkv and proj weights (see the module doc)."""
    alpha1, beta1, alpha2, beta2, qk_scale = coefs
    dim = int(attn.qkv.weight.shape[1])
    heads, head_dim = int(attn.num_heads), int(attn.head_dim)
    if attn.qkv.weight.shape[0] != 3 * heads * head_dim or heads * head_dim != dim:
        raise ValueError(f"expected qkv [3 d, d] with d = heads x head_dim, got {attn.qkv}")
    wq, wk, _ = mimetic_factors(dim, head_dim, alpha1, beta1, generator, count=heads)
    root = math.sqrt(qk_scale)
    wv, wproj, _ = mimetic_factors(dim, dim, alpha2, -beta2, generator)
    # timm's rows: head h's queries are qkv.weight[h k:(h + 1) k] = (W_q^h)^T, keys d rows on
    weight = torch.cat([root * wq.mT.reshape(dim, dim), root * wk.mT.reshape(dim, dim), wv[0].T])
    attn.qkv.weight.copy_(weight)
    attn.proj.weight.copy_(wproj[0])  # y = o W_proj, W_proj = wproj^T: proj.weight = wproj


@torch.no_grad()
def mimetic_init_(
    model: nn.Module,
    alpha1: float = 0.7,
    beta1: float = 0.7,
    alpha2: float = 0.4,
    beta2: float = 0.4,
    qk_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Re-initialise ``model`` (a timm ``VisionTransformer``) in place, mimetically (see the
    module doc): every block's ``attn.qkv`` / ``attn.proj`` weights, and ``pos_embed`` (2-D
    sin-cos, prefix slots zero). ``qk_scale`` multiplies every ``W_q W_k^T``. Draws block by
    block (the heads' Z as one ``[heads, d, d]``, then the value/projection Z) from ``generator`` (None: a fresh
    generator seeded 0). Returns ``model``."""
    if qk_scale <= 0:
        raise ValueError(f"qk_scale must be > 0, got {qk_scale}")
    if not hasattr(model, "blocks") or getattr(model, "pos_embed", None) is None:
        raise TypeError(f"{type(model).__name__} is not a timm VisionTransformer with pos_embed")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    coefs = (alpha1, beta1, alpha2, beta2, qk_scale)
    for block in model.blocks:
        _init_attention(block.attn, coefs, generator)
    model.pos_embed.copy_(sincos_pos_embed(model))
    return model
