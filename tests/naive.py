"""The naive references the tests hold the analysis to: plain Python loops over SPEC.md 1-4's
formulas as printed, attention rollout's product row by row, and a real timm ViT's softmax maps
computed block by block with its own submodules (imported as ``from naive import ...``)."""

from __future__ import annotations

import math
from fractions import Fraction

import torch


def naive_u(maps):
    l = len(maps)
    b, k, n, _ = maps[0].shape
    u = torch.zeros(b, n, n, dtype=torch.float64)
    for bi in range(b):
        for i in range(n):
            for j in range(n):
                ucal = []
                for h in range(k):
                    vals = [float(maps[t][bi, h, i, j]) for t in range(l)]
                    m = sum(vals) / l
                    ucal.append(sum((v - m) ** 2 for v in vals) / l)
                m = sum(ucal) / k
                u[bi, i, j] = sum((c - m) ** 2 for c in ucal) / k
    return u


def naive_windows(u, alpha, grid):
    _, w = grid
    b, n, _ = u.shape
    t = max(1, math.floor(Fraction(str(alpha)) * n * n + Fraction(1, 2)))
    out = torch.zeros(b, n, 4, dtype=torch.long)
    for bi in range(b):
        flat = [(-float(u[bi, i // n, i % n]), i) for i in range(n * n)]
        chosen = {idx for _, idx in sorted(flat)[:t]}
        for p in range(n):
            members = {p} | {i for i in range(n) if p * n + i in chosen}
            xs = [m % w for m in members]
            ys = [m // w for m in members]
            out[bi, p] = torch.tensor([min(xs), min(ys), max(xs), max(ys)])
    return out


def naive_mask(windows, grid):
    _, w = grid
    b, n, _ = windows.shape
    mask = torch.zeros(b, n, n, dtype=torch.bool)
    for bi in range(b):
        for p in range(n):
            xl, yt, xr, yb = windows[bi, p].tolist()
            for j in range(n):
                mask[bi, p, j] = xl <= j % w <= xr and yt <= j // w <= yb
    return mask


def naive_dip_order(u):
    b, n, _ = u.shape
    out = []
    for bi in range(b):
        v = []
        for p in range(n):
            col = [float(u[bi, i, p]) for i in range(n)]
            m = sum(col) / n
            v.append(sum((c - m) ** 2 for c in col) / n)
        out.append(sorted(range(n), key=lambda p: (v[p], p)))
    return torch.tensor(out)


def naive_field(windows, order, beta, grid):
    b, n, _ = windows.shape
    drop = math.floor(Fraction(str(beta)) * n)
    mask = naive_mask(windows, grid)
    field = torch.zeros(b, n, n, dtype=torch.bool)
    for bi in range(b):
        dropped = set(order[bi, :drop].tolist())
        for p in range(n):
            for i in range(n):
                field[bi, p, i] = i == p or (bool(mask[bi, p, i]) and i not in dropped)
    return field


def naive_rollout(maps, prefix):
    b, _, t, _ = maps[0].shape
    out = []
    for i in range(b):
        r = torch.eye(t, dtype=torch.float64)
        for a in maps:
            m = a[i].double().mean(0)
            m = 0.5 * m + 0.5 * torch.eye(t, dtype=torch.float64)
            for row in range(t):
                m[row] = m[row] / m[row].sum()
            r = m @ r
        out.append(r[0, prefix:])
    return torch.stack(out)


def hand_attention(model, images, bias=None, attn_mask=None):
    """softmax(q k^T * scale (+ ``bias(attn)``, -inf where ``attn_mask`` is False)) per block,
    each block's input from the block before (``blk(x, attn_mask=attn_mask)``), the logits by
    hand from timm's own submodules."""
    maps = []
    with torch.no_grad():
        x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
        for blk in model.blocks:
            attn = blk.attn
            y = blk.norm1(x)
            b, t, _ = y.shape
            qkv = attn.qkv(y).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            q, k, _ = qkv.unbind(0)
            logits = (q @ k.transpose(-2, -1)) * attn.head_dim**-0.5
            if bias is not None:
                logits = logits + bias(attn).to(logits.dtype)
            if attn_mask is not None:
                logits = logits.masked_fill(~attn_mask, float("-inf"))
            maps.append(logits.softmax(-1))
            x = blk(x) if attn_mask is None else blk(x, attn_mask=attn_mask)
    return maps
