"""``model.net.pretrained=true``: timm's hub weights of a tagged model name, read offline
(``HF_HUB_OFFLINE=1``) from a planted Hugging Face cache; a missing file is an error naming
the repo and the file timm asked for."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import save_file

from helpers import scrambled, tiny_vit
from winft_lightning.models import build_vit
from winft_lightning.models.weights import PretrainedWeightsMissing

NAME = "vit_tiny_patch16_224.augreg_in21k"  # timm's hub repo timm/<NAME>, 21843 classes
CLASSES = 21843
ARCH = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty HF cache, offline: the environment a user sets, and huggingface_hub's
    constants (read once at its import) pointed at it."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def plant(cache: Path, repo: str, model: torch.nn.Module) -> Path:
    """``model``'s weights as ``model.safetensors`` of ``repo`` at ``refs/main`` (the layout
    ``hf_hub_download`` writes: refs/main holds the commit, snapshots/<commit>/<file>)."""
    commit = hashlib.sha1(repo.encode()).hexdigest()
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)  # no newline: huggingface_hub reads it raw
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, snap / "model.safetensors"
    )
    return snap / "model.safetensors"


@pytest.fixture
def planted(hf_cache) -> torch.nn.Module:
    """The model whose weights the cache holds for timm/NAME (its head: 21843 classes)."""
    model = scrambled(tiny_vit(**ARCH, num_classes=CLASSES), seed=4)
    plant(hf_cache, f"timm/{NAME}", model)
    return model


def test_pretrained_reads_the_planted_cache(planted):
    net = build_vit(NAME, num_classes=CLASSES, pretrained=True, **ARCH).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, ref = net(x), planted(x)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # another class count: a fresh head, the rest loaded
    five = build_vit(NAME, num_classes=5, pretrained=True, **ARCH)
    assert five.head.weight.shape == (5, 32)
    ref_sd = planted.state_dict()
    for k, v in five.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(v, ref_sd[k]), k


def test_model_net_pretrained_reaches_build_vit(planted, make_cfg):
    cfg = make_cfg(
        "experiment=fmnist_vit", "debug=tiny", "model.net.pretrained=true",
        f"model.net.model_name={NAME}", "model.net.img_size=32",
    )  # fmt: skip
    assert cfg.model.net.pretrained is True
    module = instantiate(cfg.model, _convert_="all")
    ref_sd = planted.state_dict()
    for k, v in module.net.state_dict().items():
        if not k.startswith("head."):  # the run's 10 classes: a fresh head
            assert torch.equal(v, ref_sd[k]), k


def test_missing_pretrained_weights_name_the_repo_and_file(hf_cache):
    with pytest.raises(PretrainedWeightsMissing) as err:
        build_vit(NAME, num_classes=5, pretrained=True, **ARCH)
    msg = str(err.value)
    assert f"repo timm/{NAME}" in msg and "model.safetensors" in msg
    assert str(hf_cache) in msg and "HF_HUB_OFFLINE=1" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_checkpoint_and_pretrained_together_are_refused(tmp_path):
    with pytest.raises(ValueError, match="either checkpoint"):
        build_vit(NAME, pretrained=True, checkpoint=str(tmp_path / "w.pth"), **ARCH)


def test_the_new_key_keeps_the_teacher_cache_key(make_cfg, tmp_path):
    """``model.net.pretrained: false`` is left out of the teacher's cache key (keys of
    teachers trained before the option existed still match); true is part of it."""
    from omegaconf import open_dict

    from winft_lightning.stages.cache import teacher_key

    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text('{"splits": {}, "format": 2}')
    cfg = make_cfg("experiment=fmnist_awd_vit", "debug=tiny")
    key = teacher_key(cfg, shards)
    with open_dict(cfg):
        del cfg.model.net.pretrained  # the config as it was before the option
    assert teacher_key(cfg, shards) == key
    on = make_cfg("experiment=fmnist_awd_vit", "debug=tiny", "model.net.pretrained=true")
    assert teacher_key(on, shards) != key
