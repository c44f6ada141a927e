"""load_teacher: Lightning checkpoints and plain timm weights files, back to equal weights."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import save_file

from helpers import TINY_NET, tiny_vit
from winft_lightning.models.teacher import TeacherError, file_sha256, load_teacher, timm_kwargs

TINY = TINY_NET  # load_teacher's keyword arguments: the tests' tiny net


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def test_lightning_checkpoint(teacher_ckpt):
    model, info = load_teacher(teacher_ckpt)
    assert_same_weights(model, tiny_vit())
    assert not model.training
    assert info.kind == "lightning" and info.model_name == "vit_tiny_patch16_224"
    assert (info.img_size, info.patch_size, info.grid) == (16, 4, (4, 4))
    assert info.num_prefix_tokens == 1 and info.num_classes == 10
    assert info.sha256 == hashlib.sha256(teacher_ckpt.read_bytes()).hexdigest()
    assert info.mean == (0.3053,) * 3  # the datamodule's normalisation, from the checkpoint
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x), tiny_vit()(x))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_plain_timm_weights(tmp_path, suffix):
    ref = tiny_vit(seed=3)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(ref.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model, info = load_teacher(path, **TINY)
    assert_same_weights(model, ref)
    assert info.kind == "timm" and info.sha256 == file_sha256(path) and info.grid == (4, 4)
    # another image size: timm resamples the position embedding (grid 8x8)
    big, info32 = load_teacher(path, **{**TINY, "img_size": 32})
    assert info32.grid == (8, 8) and big.pos_embed.shape == (1, 65, 32)
    torch.testing.assert_close(big.blocks[0].attn.qkv.weight, ref.blocks[0].attn.qkv.weight)


def test_bad_teacher_files(tmp_path, teacher_ckpt):
    with pytest.raises(FileNotFoundError, match=r"nope\.ckpt"):
        load_teacher(tmp_path / "nope.ckpt")
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(TeacherError, match="not a PyTorch checkpoint"):
        load_teacher(text)
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\x00" * 64)
    with pytest.raises(TeacherError, match="safetensors"):
        load_teacher(fake, **TINY)
    weights = tmp_path / "w.pth"
    torch.save(tiny_vit().state_dict(), weights)
    with pytest.raises(TeacherError, match="model_name"):
        load_teacher(weights)
    with pytest.raises(TeacherError, match="does not fit"):
        load_teacher(weights, **{**TINY, "depth": 3})
    # a Lightning checkpoint whose hparams describe another network
    ck = torch.load(teacher_ckpt, weights_only=True)
    ck["hyper_parameters"]["net"]["embed_dim"] = 64
    other = tmp_path / "other.ckpt"
    torch.save(ck, other)
    with pytest.raises(TeacherError, match="do not fit"):
        load_teacher(other)


def test_timm_kwargs_filters_our_keys():
    name, kw = timm_kwargs(
        {
            **TINY,
            "attn": "awd",
            "alpha": 0.1,
            "checkpoint": None,
            "embed_dim": None,
            "img_size": [16, 16],
        }
    )
    assert name == "vit_tiny_patch16_224"
    assert kw == dict(img_size=(16, 16), patch_size=4, num_classes=10, depth=2, num_heads=2)
