"""Fixtures and helpers of the data-layer tests: real shard sets on disk, real tiny ViTs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from winft_lightning.prepare import prepare_shards

__all__ = [
    "DIGITS",
    "analyzed_shards",
    "decode_png",
    "digits_shards",
    "digits_source",
    "teacher_ckpt",
    "tiny_vit",
]

DIGITS = {
    "name": "digits",
    "val_fraction": 0.1,
    "test_fraction": 0.2,
    "seed": 0,
    "limit": {"train": 200, "val": 40, "test": 60},
    "maxcount": 25,
}


def digits_source(**kw) -> dict:
    return {**DIGITS, **kw}


def tiny_vit(img_size: int = 16, patch_size: int = 4, seed: int = 0, **kw) -> torch.nn.Module:
    """A real timm ViT: depth 2, width 32, 2 heads."""
    torch.manual_seed(seed)
    args = dict(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=10,
    )
    args.update(kw)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory) -> Path:
    """200/40/60 digits in shards of 25: 8 train, 2 val, 3 test shards."""
    out = tmp_path_factory.mktemp("digits") / "shards"
    prepare_shards(DIGITS, out, progress=False)
    return out


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory) -> Path:
    """An untrained ViTModule teacher as the pipeline saves one (``teacher.save_untrained``):
    the weights of ``tiny_vit()`` (16 px, patch 4: grid 4x4, N = 16), plus the datamodule
    normalisation a trained teacher's checkpoint carries."""
    from winft_lightning.teacher import save_untrained

    net = dict(model_name="vit_tiny_patch16_224", img_size=16, patch_size=4, num_classes=10,
               embed_dim=32, depth=2, num_heads=2)  # fmt: skip
    torch.manual_seed(0)  # as tiny_vit(): the same weights
    path = tmp_path_factory.mktemp("teacher") / "teacher.ckpt"
    save_untrained({"_target_": "winft_lightning.modules.ViTModule", "net": net}, path)
    ckpt = torch.load(path, weights_only=True)
    dm = {"root": "/somewhere", "mean": [0.3053] * 3, "std": [0.3759] * 3, "img_size": 16}
    torch.save(ckpt | {"datamodule_hyper_parameters": dm}, path)
    return path


@pytest.fixture(scope="session")
def analyzed_shards(tmp_path_factory, digits_shards, teacher_ckpt) -> Path:
    """The digits shard set analysed by ``teacher_ckpt`` at alphas 0.1 and 0.5."""
    from winft_lightning.analyze import analyze_shards

    out = tmp_path_factory.mktemp("analyzed") / "masks"
    analyze_shards(
        teacher=teacher_ckpt,
        shards=digits_shards,
        out_dir=out,
        alphas=[0.1, 0.5],
        batch_size=32,
        progress=False,
    )
    return out
