"""build_vit: architecture overrides, checkpoint files, pos-embed resampling, errors."""

from __future__ import annotations

import pytest
import torch
from timm.layers import Attention, resample_abs_pos_embed

from helpers import MODEL_KW
from winft_lightning.models import AwdAttention, WinftAttention, build_vit, net_spec

KW = {k: v for k, v in MODEL_KW.items() if k != "img_size"}


def test_overrides_and_layers():
    full = build_vit(img_size=16, **KW)
    assert len(full.blocks) == 2 and full.embed_dim == 32 and full.blocks[0].attn.num_heads == 2
    assert type(full.blocks[0].attn) is Attention  # baseline keeps timm's fused attention
    assert isinstance(build_vit(img_size=16, attn="awd", **KW).blocks[1].attn, AwdAttention)
    assert isinstance(build_vit(img_size=16, attn="winft", **KW).blocks[1].attn, WinftAttention)
    spec = net_spec(full)
    assert spec.grid == (4, 4) and spec.num_prefix_tokens == 1
    tiny = build_vit("vit_tiny_patch16_224", img_size=32, patch_size=16, num_classes=3)
    assert tiny.embed_dim == 192 and len(tiny.blocks) == 12  # no override: the named architecture
    assert tiny.patch_embed.grid_size == (2, 2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="attn"):
        build_vit(img_size=16, attn="window", **KW)
    with pytest.raises(ValueError, match="dip"):
        build_vit(img_size=16, dip="drop", **KW)


def test_checkpoint_round_trip_and_pos_embed_resampling(tmp_path):
    torch.manual_seed(0)
    src = build_vit(img_size=16, **KW)
    path = tmp_path / "vit.pth"
    torch.save(src.state_dict(), path)

    same = build_vit(img_size=16, attn="winft", checkpoint=str(path), **KW)
    for k, v in src.state_dict().items():
        assert torch.equal(same.state_dict()[k], v), k

    big = build_vit(img_size=24, attn="awd", checkpoint=str(path), **KW)
    assert big.pos_embed.shape == (1, 1 + 36, 32)
    expect = resample_abs_pos_embed(src.pos_embed.detach(), (6, 6), (4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(big.pos_embed.detach(), expect)
    assert torch.equal(big.blocks[1].attn.qkv.weight, src.blocks[1].attn.qkv.weight)
    assert torch.equal(big.head.weight, src.head.weight)  # same class count: head kept


def test_lightning_checkpoint_and_new_head(tmp_path):
    torch.manual_seed(0)
    src = build_vit(img_size=16, **KW)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in src.state_dict().items()}}, path)
    net = build_vit(img_size=16, checkpoint=str(path), **KW)
    assert torch.equal(net.head.weight, src.head.weight)
    other = build_vit(img_size=16, checkpoint=str(path), **dict(KW, num_classes=7))
    assert other.head.weight.shape == (7, 32)  # different class count: fresh head
    assert torch.equal(other.blocks[0].mlp.fc1.weight, src.blocks[0].mlp.fc1.weight)


def test_missing_checkpoint(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        build_vit(img_size=16, checkpoint=str(missing), **KW)
