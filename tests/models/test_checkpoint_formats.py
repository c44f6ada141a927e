"""One reader for every weights file, the format read from the content: Google's ``.npz``
(original ViT and big_vision layouts, through timm's own npz loader), ``.safetensors``, timm
``.pth`` state dicts and Lightning checkpoints give the source network's logits through
``build_vit`` and ``load_teacher``; a file of none of them is refused naming it and the
accepted formats."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from helpers import google_npz, scrambled, tiny_vit
from winft_lightning.models import build_vit
from winft_lightning.models.teacher import TeacherError, load_teacher
from winft_lightning.runtime.checkpoints import (
    UnreadableCheckpoint,
    checkpoint_format,
    read_checkpoint,
)

ARCH = dict(model_name="vit_tiny_patch16_224", patch_size=4, embed_dim=32, depth=2, num_heads=2)
KW = dict(ARCH, img_size=32, num_classes=5)
ACCEPTED = re.escape(
    "Accepted: a Lightning checkpoint (.ckpt), a timm/torch state dict (.pth, .pt, .bin), "
    "a .safetensors file, or a Google .npz (original ViT or big_vision layout)"
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def src() -> torch.nn.Module:
    """The source network: a timm ViT at 32 px, patch 4 (grid 8x8), 5 classes, O(1) weights."""
    return scrambled(tiny_vit(img_size=32, patch_size=4, num_classes=5), seed=1)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def same_logits(net: torch.nn.Module, src: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        out, ref = net.eval()(x), src(x)
    assert ref.abs().max() > 0.1  # a test of every weight, not of near-zero logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def same_weights(net: torch.nn.Module, src: torch.nn.Module, skip: str = "") -> None:
    ref = src.state_dict()
    for k, v in net.state_dict().items():
        if not (skip and k.startswith(skip)):
            torch.testing.assert_close(v, ref[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize("big_vision", [False, True], ids=["original", "big_vision"])
def test_google_npz_gives_the_source_logits(tmp_path, src, x, big_vision):
    path = google_npz(src, tmp_path / "vit.npz", big_vision=big_vision)
    assert checkpoint_format(path) == "npz"
    net = build_vit(**KW, checkpoint=str(path))
    same_weights(net, src)
    same_logits(net, src, x)
    # through the AWD attention too: the same weights whatever the attention class
    same_weights(build_vit(**KW, attn="awd", checkpoint=str(path)), src)


def test_npz_at_another_resolution_resamples_the_pos_embed(tmp_path, src):
    path = google_npz(src, tmp_path / "vit.npz")
    big = build_vit(**{**KW, "img_size": 48}, checkpoint=str(path))
    assert tuple(big.patch_embed.grid_size) == (12, 12)
    assert big.pos_embed.shape == (1, 1 + 144, 32)
    # timm's npz loader: bilinear, no antialias, the class token's position kept
    expect = resample_abs_pos_embed(
        src.pos_embed.detach(), (12, 12), num_prefix_tokens=1, interpolation="bilinear",
        antialias=False,
    )  # fmt: skip
    torch.testing.assert_close(big.pos_embed.detach(), expect)
    same_weights(big, src, skip="pos_embed")
    with torch.no_grad():
        assert big(torch.randn(1, 3, 48, 48)).shape == (1, 5)


def test_npz_with_another_class_count_gets_a_fresh_head(tmp_path, src):
    path = google_npz(src, tmp_path / "vit.npz")
    net = build_vit(**{**KW, "num_classes": 7}, checkpoint=str(path))
    assert net.head.weight.shape == (7, 32) and net.num_classes == 7
    assert torch.equal(net.head.bias, torch.zeros(7))  # timm's init, not the file's head
    same_weights(net, src, skip="head.")


def test_npz_of_another_depth_is_refused(tmp_path, src):
    path = google_npz(src, tmp_path / "vit.npz")
    for depth in (1, 3):
        with pytest.raises(ValueError, match=r"vit\.npz has 2 transformer blocks, the model \d"):
            build_vit(**{**KW, "depth": depth}, checkpoint=str(path))
    with pytest.raises(TeacherError, match="does not fit"):
        load_teacher(path, **{**KW, "depth": 1})


def test_load_teacher_reads_a_google_npz(tmp_path, src, x):
    path = google_npz(src, tmp_path / "teacher.npz", big_vision=True)
    teacher, info = load_teacher(path, **ARCH, img_size=32)  # classes: the file's head
    same_logits(teacher, src, x)
    assert info.kind == "timm" and info.grid == (8, 8) and info.num_classes == 5
    assert (info.img_size, info.patch_size, info.num_prefix_tokens) == (32, 4, 1)
    _, info48 = load_teacher(path, **ARCH, img_size=48)
    assert info48.grid == (12, 12)


def test_the_content_decides_not_the_suffix(tmp_path, src, x):
    npz_as_pth = google_npz(src, tmp_path / "google.pth")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "st.bin")
    torch.save(src.state_dict(), tmp_path / "torch.safetensors")
    formats = {"google.pth": "npz", "st.bin": "safetensors", "torch.safetensors": "torch"}
    for name, fmt in formats.items():
        path = tmp_path / name
        assert checkpoint_format(path) == fmt, name
        same_logits(build_vit(**KW, checkpoint=str(path)), src, x)
        same_logits(load_teacher(path, **KW)[0], src, x)
    arrays = read_checkpoint(npz_as_pth)  # an npz reads as its arrays
    assert arrays["head/bias"].shape == (5,) and arrays["embedding/kernel"].shape == (4, 4, 3, 32)


def _truncated(src_path, out):
    data = src_path.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


def test_unreadable_files_name_the_file_and_the_accepted_formats(tmp_path, src):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(7, 250)) * 10)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    google = google_npz(src, tmp_path / "whole.npz")
    torch.save(src.state_dict(), tmp_path / "whole.pth")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "w.safetensors")
    cut = [
        _truncated(google, tmp_path / "cut.npz"),
        _truncated(tmp_path / "whole.pth", tmp_path / "cut.pth"),
        _truncated(tmp_path / "w.safetensors", tmp_path / "cut.safetensors"),
    ]
    other_npz = tmp_path / "other.npz"
    with open(other_npz, "wb") as f:
        np.savez(f, weights=np.zeros(3))
    for path in [garbage, empty, *cut]:
        with pytest.raises(UnreadableCheckpoint, match=rf"{re.escape(str(path))}.*{ACCEPTED}"):
            read_checkpoint(path)
        with pytest.raises(UnreadableCheckpoint, match=rf"{re.escape(str(path))}.*{ACCEPTED}"):
            build_vit(**KW, checkpoint=str(path))
        with pytest.raises(TeacherError, match=rf"{re.escape(str(path))}.*{ACCEPTED}"):
            load_teacher(path, **KW)
    with pytest.raises(UnreadableCheckpoint, match=rf"other\.npz.*Google's ViT layout.*{ACCEPTED}"):
        build_vit(**KW, checkpoint=str(other_npz))
    with pytest.raises(TeacherError, match=r"other\.npz.*Google's ViT layout"):
        load_teacher(other_npz, **KW)


def test_torch_and_safetensors_files_still_give_the_source_logits(tmp_path, src, x):
    sd = src.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    torch.save(sd, tmp_path / "timm.pth")
    torch.save(
        {"state_dict": {f"net.{k}": v for k, v in sd.items()}, "epoch": 1}, tmp_path / "l.ckpt"
    )
    for name in ("w.safetensors", "timm.pth", "l.ckpt"):
        net = build_vit(**KW, checkpoint=str(tmp_path / name))
        same_weights(net, src)
        same_logits(net, src, x)


def test_readme_headline_command_trains_from_a_google_npz_on_an_imagefolder(tmp_path):
    """README's headline command as written, its three paths pointed at a tiny ImageFolder
    tree and a Google ``.npz`` (a width-32 ViT-B/16-224 layout, so the run at 384 resamples
    the pos-embed 14x14 -> 24x24; the same file is the teacher), with the CPU overrides and
    the file's width; it takes its training steps and tests."""
    from PIL import Image

    from helpers import cli
    from readme import COMMANDS

    (headline,) = [
        c for c in COMMANDS if c.module == "winft_lightning" and "checkpoint=/" in c.text
    ]
    source = tiny_vit(img_size=224, patch_size=16, num_classes=2)
    npz = google_npz(scrambled(source, seed=2), tmp_path / "vit_b16_in21k.npz")
    tree = tmp_path / "imagenet"
    g = np.random.default_rng(0)
    for split, per_class in (("train", 6), ("val", 2)):
        for cls in ("n01", "n02"):
            (tree / split / cls).mkdir(parents=True)
            for i in range(per_class):
                pixels = g.integers(0, 255, (48, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tree / split / cls / f"{i}.JPEG")
    paths = {"data.source.path": tree, "teacher.ckpt": npz, "model.net.checkpoint": npz}
    args = []
    for arg in headline.args:
        key = arg.split("=", 1)[0]
        args.append(f"{key}={paths.pop(key)}" if key in paths else arg)
    assert not paths, f"README's headline command lost {sorted(paths)}"
    cpu = ["trainer=cpu", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
           "trainer.accumulate_grad_batches=1", "+trainer.limit_val_batches=1",
           "+trainer.limit_test_batches=1", "data.batch_size=4",
           "data.num_workers=0", "data.num_classes=2", "data.source.val_count=2",
           "model.net.embed_dim=32", "model.net.depth=2", "model.net.num_heads=2",
           f"paths.root_dir={tmp_path}", "logger=csv"]  # fmt: skip
    # a fresh interpreter, as a user types it: forked, this 384 px run once failed in a thread
    # of the child with torch's "Invalid thread pool!" (2026-12-07; not reproduced alone)
    proc = cli(*args, *cpu, timeout=400, cwd=tmp_path, fresh=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = (tmp_path / "outputs").rglob("results.json")
    result = json.loads(results.read_text())
    assert result["module"] == "WinfTModule" and result["num_patches"] == 24 * 24
    assert result["teacher_ckpt"] == str(npz)
    ckpt = torch.load(result["best_ckpt"], map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    assert ckpt["hyper_parameters"]["net"]["checkpoint"] == str(npz)
    assert ckpt["state_dict"]["net.pos_embed"].shape == (1, 1 + 24 * 24, 32)
