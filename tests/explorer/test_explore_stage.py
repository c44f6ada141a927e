"""``python -m winft_lightning.explore`` (``stages.explore.run`` on the composed config): from a
teacher file and image files, from a run's directory (its teacher, its test split, its alpha
and beta), and its refusals, each naming the option and the file."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from helpers import compose_config
from winft_lightning.explorer.pack import DEFAULT_BETAS
from winft_lightning.models.teacher import TeacherError
from winft_lightning.stages.explore import ExploreError, run, run_source


def explore(tmp_path: Path, *overrides: str) -> dict:
    """Run the CLI's job on its composed config; returns the page's data."""
    cfg = compose_config(
        [f"out_file={tmp_path}/page/explorer.html", *overrides], tmp_path, "explore"
    )
    page = run(OmegaConf.to_container(cfg, resolve=True))
    assert page == tmp_path / "page" / "explorer.html"
    return json.loads(re.search(r'id="explorer-data">(.*?)</script>', page.read_text(), re.S)[1])


def write_pngs(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(count):
        pixels = torch.randint(0, 256, (20, 24, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{i}.png")
        paths.append(folder / f"img{i}.png")
    return paths


def test_from_a_teacher_file_and_a_folder_of_images(tmp_path, teacher_ckpt):
    write_pngs(tmp_path / "pics", 2)
    data = explore(tmp_path, f"ckpt={teacher_ckpt}", f"images=[{tmp_path}/pics]")
    assert [im["name"] for im in data["images"]] == ["img0.png", "img1.png"]
    assert data["grid"] == [4, 4] and data["alphas"] == [0.025, 0.05, 0.1, 0.2, 0.5, 1.0]
    assert data["betas"] == list(DEFAULT_BETAS) and data["images"][0]["head_attention"] is None
    assert data["source"] == {"teacher": str(teacher_ckpt)}


def run_dir(tmp_path: Path, **row) -> Path:
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    (out / "results.json").write_text(json.dumps(row))
    return out


def test_from_a_run_dir_its_teacher_test_split_and_sliders(tmp_path, teacher_ckpt, digits_shards):
    row = dict(module="AWDViTModule", teacher_ckpt=str(teacher_ckpt), mask_root=str(digits_shards),
               alpha=0.2, beta=0.25, best_ckpt="")  # fmt: skip
    data = explore(tmp_path, f"run={run_dir(tmp_path, **row)}", "num_images=2", "heads=true")
    assert [im["name"] for im in data["images"]] == ["test_00000000", "test_00000001"]
    assert data["start"] == {"alpha": 3, "beta": 5}  # the run's alpha 0.2 and beta 0.25
    assert data["images"][0]["head_attention"]["q"]["shape"] == [2, 2, 16, 16]
    # a ViT run is its own teacher; a WinfT run brings its own W
    own = tmp_path / "run" / "checkpoints" / "epoch_001.ckpt"
    own.parent.mkdir()
    shutil.copyfile(teacher_ckpt, own)
    moved = "/elsewhere/checkpoints/epoch_001.ckpt"  # recorded before the run dir moved
    vit = run_source(run_dir(tmp_path, module="ViTModule", best_ckpt=moved))
    assert (vit.teacher, vit.winft, vit.shards) == (own, None, None)
    winft = run_source(run_dir(tmp_path, module="WinfTModule", teacher_ckpt=str(teacher_ckpt),
                               best_ckpt=str(own), mask_root="/m"))  # fmt: skip
    assert (winft.teacher, winft.winft, winft.shards) == (teacher_ckpt, own, Path("/m"))


def test_bad_input_is_refused_naming_the_option_and_the_file(tmp_path, teacher_ckpt):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a network")
    conv = tmp_path / "conv.pth"
    torch.save(torch.nn.Conv2d(3, 4, 3).state_dict(), conv)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    empty = tmp_path / "empty"  # neither a run dir nor a folder of runs
    empty.mkdir()
    cases = [
        ([f"ckpt={notes}"], TeacherError, f"{notes} is not a PyTorch checkpoint"),
        ([f"ckpt={conv}"], TeacherError, f"{conv} is a plain weights file"),
        ([f"ckpt={conv}", "+load.model_name=resnet18"], ExploreError,
         "load.model_name=resnet18 is a timm resnet model"),
        ([f"ckpt={tmp_path}/none.ckpt"], FileNotFoundError, f"ckpt={tmp_path}/none.ckpt does not"),
        ([f"ckpt={teacher_ckpt}", f"images=[{broken}]"], ExploreError,
         f"images: {broken} cannot be read as an image"),
        ([f"ckpt={teacher_ckpt}", f"images=[{tmp_path}/gone.png]"], ExploreError,
         f"images: {tmp_path}/gone.png does not exist"),
        ([f"run={run_dir(tmp_path, module='WinfTModule', best_ckpt='')}"], ExploreError,
         f"run={tmp_path}/run has no teacher"),
        ([f"run={empty}"], ExploreError, f"run={empty} has no results.json"),
        ([], ExploreError, "no teacher: give ckpt=TEACHER_FILE or run=RUN_DIR"),
        (["betas=[0.5,1.0]"], ExploreError, "betas=1.0 is outside [0, 1)"),
        ([f"out_file={tmp_path}/page/x.png"], ExploreError, "must be an .html file"),
    ]  # fmt: skip
    for overrides, error, message in cases:
        with pytest.raises(error, match=re.escape(message)):
            explore(tmp_path, *overrides)
    assert not (tmp_path / "page").exists()
