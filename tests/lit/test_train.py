"""The four LightningModules trained for real (digits shards, real masks, real Trainer)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from helpers import NO_FIGURES, chance_top1, tiny_module
from winft_lightning.__main__ import run
from winft_lightning.lit.modules import MODULES, NonFiniteLossError
from winft_lightning.stages.validate import ConfigError, validate_config

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("train")]  # one prerequisites cache

N = 16  # debug=tiny: 16 px, patch 4


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One cache per module: shards, teacher and masks are built once, then reused."""
    return tmp_path_factory.mktemp("cache")


def epoch_means(run_dir: Path, key: str) -> list[float]:
    rows = list(csv.DictReader((run_dir / "csv" / "version_0" / "metrics.csv").open()))
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.mark.parametrize("family", list(MODULES))
def test_each_module_trains_on_digits_with_real_masks(make_cfg, tmp_path, cache_dir, family):
    run_dir = tmp_path / family
    cfg = make_cfg(
        f"experiment=fmnist_{family}",
        "debug=tiny",
        f"paths.cache_dir={cache_dir}",
        "trainer.max_epochs=4",
        NO_FIGURES,
        run_dir=run_dir,
    )
    rows = run(cfg)
    row = rows[-1]
    assert json.loads((run_dir / "results.json").read_text()) == row
    losses = epoch_means(run_dir, "train/loss_epoch")
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    eo = epoch_means(run_dir, "val/eo")
    assert eo and all(0 < v <= N * N for v in eo)
    assert 0 < row["eo"] <= N * N and math.isclose(row["eo_ratio"], row["eo"] / N**2)
    if family == "vit":
        assert row["eo"] == N * N and len(rows) == 1
    else:
        assert row["eo"] < N * N  # alpha = 0.1 windows / predicted W keep fewer interactions
        teacher = rows[0]
        assert teacher["name"] == "teacher ViT" and teacher["eo"] == N * N
    (shards,) = (cache_dir / "shards").glob("[!.]*")
    assert row["top1"] > chance_top1(shards), row["top1"]  # skill, not a lucky guess
    if family == "winft":
        assert epoch_means(run_dir, "train/bce") and epoch_means(run_dir, "train/ce")
    # best checkpoint reloads with no extra arguments, weights-only
    model = MODULES[family].load_from_checkpoint(row["best_ckpt"])
    assert model.hparams.net["img_size"] == 16


def test_second_run_reuses_cached_prerequisites(make_cfg, tmp_path, cache_dir, caplog):
    args = ("experiment=fmnist_awd_vit", "debug=tiny", f"paths.cache_dir={cache_dir}", NO_FIGURES)
    run(make_cfg(*args, "trainer.max_epochs=1", run_dir=tmp_path / "a"))
    caplog.clear()
    with caplog.at_level("INFO", logger="winft_lightning"):
        run(make_cfg(*args, "trainer.max_epochs=1", run_dir=tmp_path / "b"))
    text = caplog.text
    assert "shards: reusing cached" in text
    assert "teacher: reusing cached" in text
    assert "masks: reusing cached" in text


def test_checkpoint_of_other_geometry_refused(make_cfg, tmp_path, cache_dir):
    cfg = make_cfg("experiment=fmnist_vit", "debug=tiny", f"paths.cache_dir={cache_dir}",
                   "trainer.max_epochs=1", run_dir=tmp_path / "a")  # fmt: skip
    row = run(cfg)[-1]
    other = make_cfg("experiment=fmnist_vit", "debug=tiny", "model.net.img_size=32",
                     f"ckpt_path={row['best_ckpt']}")  # fmt: skip
    with pytest.raises(ConfigError, match=r"img_size=16.*img_size=32"):
        validate_config(other)


def test_data_config_reaches_the_datamodule_whole(make_cfg, tmp_path):
    """The module's alpha (model.alpha, the one owner) picks the windows the data loads;
    name/num_classes/source are not popped."""
    from hydra.utils import instantiate

    from winft_lightning.stages.train import make_datamodule

    cfg = make_cfg("experiment=fmnist_awd_vit", "debug=tiny", "model.alpha=0.2")
    assert "alpha" not in cfg.data
    dm = make_datamodule(cfg.data, tmp_path, instantiate(cfg.model, _convert_="all"))
    assert (dm.alpha, dm.use_masks, dm.expected_classes, dm.name) == (0.2, True, 10, "digits")
    assert dm.hparams.num_classes == 10 and "source" not in dm.hparams
    plain = make_datamodule(cfg.data, tmp_path)
    assert (plain.alpha, plain.use_masks) == (None, False)


@pytest.mark.parametrize("override", ["data.alpha=0.05", "+data.alpha=0.05"])
def test_a_second_alpha_for_the_data_is_refused(make_cfg, override):
    """data.alpha=0.05 model.alpha=0.1 cannot train on other windows than the module's: Hydra
    refuses the key that no longer exists, and validate_config refuses it when appended."""
    from hydra.errors import ConfigCompositionException

    args = ("experiment=fmnist_awd_vit", "debug=tiny", "model.alpha=0.1", override)
    if not override.startswith("+"):
        with pytest.raises(ConfigCompositionException, match=r"data\.alpha"):
            make_cfg(*args)
        return
    with pytest.raises(ConfigError, match=r"data\.alpha=0\.05 .*model\.alpha=0\.1"):
        validate_config(make_cfg(*args))


def test_wrong_num_classes_refused_in_the_real_path(make_cfg, tmp_path, cache_dir):
    from winft_lightning.data.errors import DataError

    cfg = make_cfg("experiment=fmnist_vit", "debug=tiny", f"paths.cache_dir={cache_dir}",
                   "data.num_classes=7", run_dir=tmp_path / "a")  # fmt: skip
    with pytest.raises(DataError, match=r"data\.num_classes=7 but .* has 10 classes"):
        run(cfg)


class PoisonWeights(L.Callback):
    """Sets one weight to NaN at a given global step (a real divergence, made deterministic)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.net.head.weight[0, 0] = float("nan")


@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_non_finite_loss(make_cfg, tmp_path, cache_dir, mode):
    from winft_lightning.stages.cache import ensure_shards
    from winft_lightning.stages.train import make_datamodule

    cfg = make_cfg("experiment=fmnist_vit", "debug=tiny", f"paths.cache_dir={cache_dir}")
    dm = make_datamodule(cfg.data, ensure_shards(cfg))
    ckpt_dir = tmp_path / "ckpt"
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True)
    steps_per_epoch = dm.num_batches("train", 1)
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
        callbacks=[checkpoint, PoisonWeights(steps_per_epoch + 1)], num_sanity_val_steps=0,
    )  # fmt: skip
    model = tiny_module(on_nonfinite=mode)
    if mode == "raise":
        with pytest.raises(NonFiniteLossError) as err:
            trainer.fit(model, datamodule=dm)
        msg = str(err.value)
        assert f"global step {steps_per_epoch + 1}" in msg and "keys [" in msg and "ce=nan" in msg
        last = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
        assert last["global_step"] == steps_per_epoch  # the good epoch-1 checkpoint is kept
        assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    else:
        trainer.fit(model, datamodule=dm)
        # the poisoned weight poisons every later batch: all of them skipped, none stepped on
        assert model.skipped_batches == steps_per_epoch - 1


@pytest.mark.parametrize(
    ("override", "named"),
    [("data.img_size=32", r"data\.img_size=32 disagrees with model\.net\.img_size=16"),
     ("model.net.num_classes=7", r"model\.net\.num_classes=7 disagrees with data\.num_classes=10")],
)  # fmt: skip
def test_a_value_the_data_and_model_share_has_one_owner(make_cfg, override, named):
    """The data follows model.net.img_size, the model follows data.num_classes: an override of
    the follower that disagrees is refused before any work, naming both options."""
    with pytest.raises(ConfigError, match=named):
        validate_config(make_cfg("experiment=fmnist_vit", "debug=tiny", override))
    owner = {"data.img_size=32": "model.net.img_size=32", "model.net.num_classes=7": None}
    if owner[override]:
        cfg = make_cfg("experiment=fmnist_vit", "debug=tiny", owner[override])
        validate_config(cfg)  # the owner's override moves both
        assert cfg.data.img_size == 32
