"""Attention capture from a real (tiny) timm ViT against a hand computation."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_vit
from naive import hand_attention
from winft_lightning.core.capture import iter_block_attention
from winft_lightning.core.interactions import uncertainty_map


@pytest.mark.parametrize("reg_tokens", [0, 2])
def test_captured_maps_equal_hand_softmax(reg_tokens):
    model = tiny_vit(reg_tokens=reg_tokens)
    prefix = model.num_prefix_tokens
    assert prefix == 1 + reg_tokens
    images = torch.randn(3, 3, 16, 16)
    full = list(iter_block_attention(model, images, patches_only=False))
    patches = list(iter_block_attention(model, images))
    hand = hand_attention(model, images)
    assert len(full) == len(patches) == 2
    for f, p, h in zip(full, patches, hand, strict=True):
        assert f.shape == (3, 2, 16 + prefix, 16 + prefix)
        torch.testing.assert_close(f, h, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(f.sum(-1), torch.ones(3, 2, 16 + prefix))  # rows over all tokens
        assert p.shape == (3, 2, 16, 16)
        torch.testing.assert_close(p, h[:, :, prefix:, prefix:], rtol=1e-5, atol=1e-6)
        assert (p.sum(-1) < 1).all()  # patch block of a row: not renormalised


def test_fused_flags_restored_and_predictions_unchanged():
    model = tiny_vit()
    for blk in model.blocks:
        blk.attn.fused_attn = True
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model(images)
    u = uncertainty_map(iter_block_attention(model, images))
    assert u.shape == (2, 16, 16) and torch.isfinite(u).all()
    assert all(blk.attn.fused_attn for blk in model.blocks)
    gen = iter_block_attention(model, images)
    next(gen)
    assert not any(blk.attn.fused_attn for blk in model.blocks)  # non-fused while capturing
    gen.close()  # abandoned half way: flags still come back
    assert all(blk.attn.fused_attn for blk in model.blocks)
    with torch.no_grad():
        torch.testing.assert_close(model(images), before)


def test_capture_refuses_non_vit():
    with pytest.raises(TypeError, match="VisionTransformer"):
        next(iter_block_attention(torch.nn.Linear(2, 2), torch.randn(1, 2)))
