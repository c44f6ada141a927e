"""Every config composes; bad options are refused before any work, naming the option."""

from __future__ import annotations

import pytest
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from conftest import EXPERIMENTS
from winft_lightning.train import ConfigError, module_class, validate_config

PAPER_ROWS = [
    f"{m}_b{p}_{r}"
    for m in ("vit", "awd_vit", "awd_dip_vit", "winft")
    for p in (16, 32)
    for r in (224, 384)
] + ["vit_b16_448_cub", "winft_b16_448_cub"]


def test_an_experiment_for_every_paper_row():
    assert set(PAPER_ROWS) <= set(EXPERIMENTS)
    assert {f"fmnist_{m}" for m in ("vit", "awd_vit", "awd_dip_vit", "winft")} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_resolves_and_validates(make_cfg, name):
    cfg = make_cfg(f"experiment={name}")
    plain = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    validate_config(cfg)
    cls = module_class(cfg.model)
    net = plain["model"]["net"]
    assert net["img_size"] % net["patch_size"] == 0
    if name in PAPER_ROWS:
        *_, patch, res = name.replace("_cub", "").split("_")
        assert net["patch_size"] == int(patch[1:]) and net["img_size"] == int(res)
        assert plain["optimizer"]["_target_"] == "torch.optim.SGD"
        assert plain["optimizer"]["momentum"] == 0.9
    family = (
        name.removeprefix("fmnist_").rsplit("_b", 1)[0]
        if "_b" in name
        else name.removeprefix("fmnist_")
    )
    expected = {
        "vit": "ViTModule",
        "awd_vit": "AWDViTModule",
        "awd_dip_vit": "AWDDIPViTModule",
        "winft": "WinfTModule",
    }
    assert cls.__name__ == expected[family]
    # the teacher always shares the student's geometry
    assert plain["teacher"]["model"]["net"] == net


def test_default_job_is_fmnist_winft(make_cfg):
    cfg = make_cfg()
    assert cfg.model._target_.endswith("WinfTModule")
    assert cfg.data.name == "fashion_mnist" and cfg.compare_teacher


@pytest.mark.parametrize(
    ("override", "option"),
    [
        ("model.alpha=0", "model.alpha"),
        ("model.alpha=1.5", "model.alpha"),
        ("model.beta=1.0", "model.beta"),
        ("model.beta=-0.1", "model.beta"),
        ("model.lambda2=-1", "model.lambda2"),
        ("model.net.img_size=30", "model.net.img_size=30"),
        ("model.alpha=0.3", "analyze.alphas"),
        ("ckpt_path=/nonexistent/last.ckpt", "ckpt_path"),
    ],
)
def test_bad_options_refused_naming_them(make_cfg, override, option):
    cfg = make_cfg("experiment=fmnist_winft", override)
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")):
        validate_config(cfg)


def test_unknown_experiment_is_named(make_cfg):
    with pytest.raises(MissingConfigException, match="experiment/no_such_experiment"):
        make_cfg("experiment=no_such_experiment")


def test_unknown_model_target_is_named(make_cfg):
    cfg = make_cfg("experiment=fmnist_vit", "model._target_=winft_lightning.modules.Nope")
    with pytest.raises(ConfigError, match=r"model\._target_"):
        validate_config(cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer=ddp", "trainer.num_nodes=4"],
        ["trainer=ddp_sim"],
        ["trainer=gpu"],
        ["logger=wandb"],
        ["logger=many_loggers"],
        ["hparams_search=optuna"],
        ["hydra/launcher=submitit_slurm"],
        ["debug=fdr"],
        ["debug=tiny"],
        ["debug=geometry", "experiment=winft_b16_384"],
    ],
)
def test_groups_compose(make_cfg, overrides):
    cfg = make_cfg(*overrides)
    OmegaConf.to_container(cfg, resolve=True)
    if "trainer=ddp" in overrides:
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.num_nodes == 4
    if "debug=geometry" in overrides:
        assert (cfg.model.net.img_size, cfg.model.net.patch_size) == (384, 16)
        assert cfg.model.net.depth == 2 and cfg.teacher.max_epochs == 0
