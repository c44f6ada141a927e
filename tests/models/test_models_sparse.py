"""Sparse (flex) path options: BlockMask builder, token orders, block sizes; GPU gradients."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from helpers import MODEL_KW, local_windows
from winft_lightning.models import (
    NetSpec,
    awd_block_mask,
    block_mask_from_dense,
    build_vit,
    flex_kernel_options,
    net_inputs,
    tiled_order,
)

KW = {**MODEL_KW, "img_size": 96}
GRID = (24, 24)  # T = 577


def _same_block_mask(a, b) -> None:
    assert a.BLOCK_SIZE == b.BLOCK_SIZE and a.seq_lengths == b.seq_lengths
    assert torch.equal(a.kv_num_blocks, b.kv_num_blocks)
    assert torch.equal(a.full_kv_num_blocks, b.full_kv_num_blocks)
    assert torch.equal(a.to_dense(), b.to_dense())
    # the visited indices (first kv_num of each row) agree
    for num, ia, ib in (
        (a.kv_num_blocks, a.kv_indices, b.kv_indices),
        (a.full_kv_num_blocks, a.full_kv_indices, b.full_kv_indices),
    ):
        pos = torch.arange(ia.shape[-1], device=ia.device)
        valid = pos < num.unsqueeze(-1)
        assert torch.equal(ia[valid], ib[valid])


@pytest.mark.parametrize("tile", [-1, 0, 4])
@pytest.mark.parametrize("block_size", [128, 64, 32, (128, 64)])
@pytest.mark.parametrize("with_keep", [False, True])
def test_dense_builder_equals_create_block_mask(tile, block_size, with_keep):
    win = local_windows(3, GRID, seed=tile + 2)
    keep = torch.rand(3, 576, generator=torch.Generator().manual_seed(1)) > 0.2
    spec = NetSpec(
        grid=GRID, num_prefix_tokens=1, attn="awd", sparse=True, tile=tile, block_size=block_size
    )
    args = (win, keep if with_keep else None, spec)
    _same_block_mask(awd_block_mask(*args), awd_block_mask(*args, builder="mask_mod"))


def test_dense_builder_for_a_dense_mask():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(2, 300, 300, generator=g) > 0.7
    mask[:, :128, :128] = True  # one full block
    mask[:, 128:256, 128:256] = False  # one empty block

    def mask_mod(b, h, q, k):
        return mask[b, q, k]

    for bs in (128, 64):
        ref = create_block_mask(mask_mod, 2, None, 300, 300, device="cpu", BLOCK_SIZE=bs)
        _same_block_mask(block_mask_from_dense(mask, mask_mod, bs), ref)


def test_identity_order_and_options():
    assert tiled_order((3, 4), 1, tile=-1).tolist() == list(range(13))
    with pytest.raises(ValueError, match="tile"):
        tiled_order((3, 4), 1, tile=-2)
    with pytest.raises(ValueError, match="block_size"):
        build_vit(attn="awd", sparse=True, block_size=48, **KW)
    assert flex_kernel_options(128) is None
    for bs in (64, 32, 16, (128, 64), (64, 128)):
        o = flex_kernel_options(bs)
        qb, kb = (bs, bs) if isinstance(bs, int) else bs
        assert qb % o["BLOCK_M"] == 0 and kb % o["BLOCK_N"] == 0
        assert qb % o["BLOCK_M1"] == 0 and kb % o["BLOCK_N1"] == 0
        assert qb % o["BLOCK_M2"] == 0 and kb % o["BLOCK_N2"] == 0
        assert o["BLOCK_N1"] % o["BLOCK_M1"] == 0 and o["BLOCK_M2"] % o["BLOCK_N2"] == 0
    net = build_vit(attn="awd", sparse=True, tile=-1, **KW)
    assert net.blocks[0].attn.perm is None  # timm order: no gather


def _nets(**sparse_kw):
    torch.manual_seed(0)
    dense = build_vit(attn="awd", **KW)
    sparse = build_vit(attn="awd", sparse=True, **KW, **sparse_kw)
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "kw", [dict(tile=-1), dict(block_size=64), dict(tile=-1, block_size=(128, 64))]
)
def test_sparse_options_match_dense_forward(kw):
    dense, sparse = (m.eval() for m in _nets(**kw))
    win = local_windows(2, GRID)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():  # FlexAttention has no CPU backward
        a = dense(x, windows=win)
        b = sparse(x, windows=win)
        fa = dense.forward_features(x, inputs=net_inputs(dense, windows=win))
        fb = sparse.forward_features(x, inputs=net_inputs(sparse, windows=win))
    torch.testing.assert_close(fb, fa, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="FlexAttention backward needs a GPU"
)


@CUDA
@pytest.mark.parametrize("kw", [dict(), dict(tile=-1), dict(block_size=64), dict(block_size=32)])
def test_compiled_sparse_matches_dense_gradients_cuda(kw):
    """The CUDA sparse path (compiled flex) against the dense mask: outputs and gradients."""
    dense, sparse = (m.cuda() for m in _nets(**kw))
    win = local_windows(3, GRID).cuda()
    x = torch.randn(3, 3, 96, 96, device="cuda")
    outs = []
    for m in (dense, sparse):
        out = m(x, windows=win)
        out.square().sum().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-3, msg=name)


@CUDA
def test_compiled_winft_neg_inf_sparse_matches_dense_cuda():
    torch.manual_seed(0)
    kw = dict(KW, img_size=64)
    dense = build_vit(attn="winft", winft_mode="neg_inf", **kw).cuda()
    sparse = build_vit(attn="winft", winft_mode="neg_inf", sparse=True, block_size=64, **kw)
    sparse = sparse.cuda()
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(2, 3, 64, 64, device="cuda")
    for m in (dense, sparse):
        m(x).logits.square().sum().backward()
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-3, msg=name)


@CUDA
@pytest.mark.parametrize("tile", [-1, 0, 4])
def test_compiled_builder_equals_dense_cuda(tile):
    """The CUDA default builder (compiled create_block_mask) gives the dense builder's mask."""
    win = local_windows(3, GRID, seed=3).cuda()
    keep = (torch.rand(3, 576, generator=torch.Generator().manual_seed(2)) > 0.2).cuda()
    spec = NetSpec(grid=GRID, num_prefix_tokens=1, attn="awd", sparse=True, tile=tile)
    for k in (None, keep):
        a = awd_block_mask(win, k, spec, builder="compiled")
        _same_block_mask(a, awd_block_mask(win, k, spec, builder="dense"))
