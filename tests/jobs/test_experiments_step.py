"""Every experiment config trains and validates one step at its real geometry (debug=geometry:
the experiment's image size, patch size and N, a 2-block 32-wide net, two images per split,
an untrained teacher), through the real prerequisites: shards -> teacher -> analyze."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import EXPERIMENTS
from winft_lightning.__main__ import run

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("experiments_step")]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_one_train_and_val_step_at_real_geometry(make_cfg, tmp_path, cache_dir, name):
    base = make_cfg(f"experiment={name}")
    img, patch = int(base.model.net.img_size), int(base.model.net.patch_size)
    cfg = make_cfg(
        f"experiment={name}", "debug=geometry", f"paths.cache_dir={cache_dir}", run_dir=tmp_path
    )
    assert (cfg.model.net.img_size, cfg.model.net.patch_size) == (img, patch)
    row = run(cfg)[-1]
    n = (img // patch) ** 2
    assert row["num_patches"] == n and row["epochs"] == 1
    assert row["module"] == cfg.model._target_.rsplit(".", 1)[1]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    if row["module"] == "ViTModule":
        assert row["eo"] == n * n
    else:  # the windows, the drop or WinfT's predicted W keep fewer interactions
        assert 0 < row["eo"] < n * n
