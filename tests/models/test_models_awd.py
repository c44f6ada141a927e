"""AWD attention (SPEC 2): dense mask, flex sparse path, against naive references."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import MODEL_KW, attention_maps, local_windows
from winft_lightning.core.interactions import awd_windows
from winft_lightning.models import (
    NetSpec,
    awd_attn_mask,
    awd_block_mask,
    build_vit,
    net_inputs,
    tiled_order,
)

GRID = (4, 4)
KW = MODEL_KW


def _windows(b: int, alpha: float = 0.1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return awd_windows(torch.rand(b, 16, 16, generator=g), alpha, GRID)


def _pair(**kw):
    torch.manual_seed(0)
    base = build_vit(attn="full", **KW).eval()
    awd = build_vit(attn="awd", **KW, **kw).eval()
    awd.load_state_dict(base.state_dict())
    return base, awd


def _naive_window(win: torch.Tensor) -> torch.Tensor:
    """[N, 4] windows -> [N, N] bool by explicit loops over patches."""
    h, w = GRID
    n = h * w
    m = torch.zeros(n, n, dtype=torch.bool)
    for p in range(n):
        x_l, y_t, x_r, y_b = win[p].tolist()
        for j in range(n):
            m[p, j] = x_l <= j % w <= x_r and y_t <= j // w <= y_b
    return m


def test_mask_layout():
    win = _windows(2)
    mask = awd_attn_mask(win, GRID, 1)
    assert mask.shape == (2, 1, 17, 17) and mask.dtype == torch.bool
    assert mask[:, 0, 0].all() and mask[:, 0, :, 0].all()  # CLS row and column free
    for b in range(2):
        assert torch.equal(mask[b, 0, 1:, 1:], _naive_window(win[b]))
    assert mask[:, 0].diagonal(dim1=-2, dim2=-1).all()
    assert not mask.all()  # alpha 0.1 restricts something


def test_probabilities_zero_outside_window():
    _, awd = _pair()
    x = torch.randn(2, 3, 16, 16)
    win = _windows(2)
    allowed = awd_attn_mask(win, GRID, 1)  # [B, 1, T, T]
    maps = attention_maps(awd, x, windows=win)
    assert len(maps) == 2
    for attn in maps:
        assert (attn.masked_select(~allowed.expand_as(attn)) == 0).all()
        assert (
            attn[:, :, 1:, 1:].masked_select(allowed[:, :, 1:, 1:].expand(-1, 2, -1, -1)) > 0
        ).all()
        assert (attn[:, :, 0, :] > 0).all()  # CLS attends to all
        assert (attn[:, :, :, 0] > 0).all()  # all attend to CLS
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 17))


def test_block_matches_naive_loop():
    _, awd = _pair()
    attn = awd.blocks[0].attn
    win = _windows(3, alpha=0.05, seed=1)
    x = torch.randn(3, 17, 32)
    with torch.no_grad():
        out = attn(x, inputs=net_inputs(awd, windows=win))
    heads, d = 2, 16
    ref = torch.empty_like(x)
    with torch.no_grad():
        for b in range(3):
            allowed = torch.ones(17, 17, dtype=torch.bool)
            allowed[1:, 1:] = _naive_window(win[b])
            q, k, v = attn.qkv(x[b]).view(17, 3, heads, d).unbind(1)  # [T, H, d] each
            heads_out = []
            for hh in range(heads):
                s = q[:, hh] @ k[:, hh].T / math.sqrt(d)
                s = s.masked_fill(~allowed, float("-inf")).softmax(-1)
                heads_out.append(s @ v[:, hh])
            ref[b] = attn.proj(torch.cat(heads_out, dim=-1))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_alpha_one_equals_baseline_exactly():
    base, awd = _pair()
    x = torch.randn(2, 3, 16, 16)
    win = _windows(2, alpha=1.0)
    assert (win[..., 0] == 0).all() and (win[..., 2] == 3).all()  # full boxes
    with torch.no_grad():
        ref = base(x)
        out = awd(x, windows=win)
        restricted = awd(x, attn_mask=awd_attn_mask(_windows(2), GRID, 1))
    assert torch.equal(out, ref)
    assert not torch.allclose(restricted, ref)


def test_explicit_timm_mask_equals_windows():
    _, awd = _pair()
    x = torch.randn(2, 3, 16, 16)
    win = _windows(2)
    with torch.no_grad():
        a = awd(x, attn_mask=awd_attn_mask(win, GRID, 1))
        b = awd(x, windows=win)
        c = awd(x, net_inputs(awd, windows=win))
    assert torch.equal(a, b) and torch.equal(a, c)


def test_awd_requires_windows():
    _, awd = _pair()
    with pytest.raises(RuntimeError, match="windows"):
        awd(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\[B, 16, 4\]"):
        net_inputs(awd, windows=torch.zeros(1, 9, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="needs the batch's windows"):
        net_inputs(awd)


def test_block_mask_skips_blocks_forlocal_windows():
    h = w = 28  # 448 / 16: T = 785 tokens, 7 x 7 blocks of 128
    p = torch.arange(h * w)
    x, y = p % w, p // w
    win = torch.stack(
        ((x - 2).clamp(0), (y - 2).clamp(0), (x + 2).clamp(max=w - 1), (y + 2).clamp(max=h - 1)), -1
    )
    spec = NetSpec(grid=(h, w), num_prefix_tokens=1, attn="awd", sparse=True)
    bm = awd_block_mask(win[None], None, spec)
    visited = (bm.kv_num_blocks.sum() + bm.full_kv_num_blocks.sum()).item()
    assert visited == 29  # of 49: row-major order (module docstring)
    dense = bm.to_dense()[0, 0]  # [7, 7] blocks
    assert dense[:, -1].all()  # the block holding CLS (last) is visited by every query block


def test_tiled_order_groups_tiles():
    assert tiled_order((3, 4), 1).tolist() == [*range(1, 13), 0]  # default: row-major, prefix last
    perm = tiled_order((4, 6), num_prefix_tokens=1, tile=2)
    assert sorted(perm.tolist()) == list(range(25)) and perm[-1] == 0  # prefix last
    patches = perm[:4] - 1  # first 2x2 tile
    assert sorted(patches.tolist()) == [0, 1, 6, 7]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("tile", [0, 4])
def test_sparse_matches_dense_forward(tile):
    torch.manual_seed(0)
    kw = dict(KW, img_size=96)  # 24x24 grid: T = 577 tokens, 5 flex blocks
    dense = build_vit(attn="awd", **kw).eval()
    sparse = build_vit(attn="awd", sparse=True, tile=tile, **kw).eval()
    full = build_vit(attn="full", **kw).eval()
    sparse.load_state_dict(dense.state_dict())
    full.load_state_dict(dense.state_dict())
    win = local_windows(3, (24, 24))
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():  # FlexAttention has no CPU backward
        a = dense.forward_features(x, inputs=net_inputs(dense, windows=win))
        inputs = net_inputs(sparse, windows=win)
        b = sparse.forward_features(x, inputs=inputs)
        bm = inputs.block_mask
        ref = full.forward_features(x)
    assert (bm.kv_num_blocks + bm.full_kv_num_blocks).sum() < 3 * 5 * 5  # some blocks skipped
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, ref, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention backward needs a GPU")
def test_sparse_matches_dense_gradients_cuda():
    torch.manual_seed(0)
    kw = dict(KW, img_size=96)
    dense = build_vit(attn="awd", **kw).cuda()
    sparse = build_vit(attn="awd", sparse=True, tile=4, **kw).cuda()
    sparse.load_state_dict(dense.state_dict())
    win = local_windows(3, (24, 24)).cuda()
    x = torch.randn(3, 3, 96, 96, device="cuda")
    for m in (dense, sparse):
        m(x, windows=win).square().sum().backward()
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-3, msg=name)
