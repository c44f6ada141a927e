"""Every config composes; bad options are refused before any work, naming the option."""

from __future__ import annotations

import pytest
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from helpers import CONF_DIR, EXPERIMENTS
from winft_lightning.core.families import BY_NAME
from winft_lightning.stages.validate import ConfigError, module_class, validate_config

PAPER_ROWS = [f"{m}_b{p}_{r}" for m in BY_NAME for p in (16, 32) for r in (224, 384)] + [
    "vit_b16_448_cub",
    "winft_b16_448_cub",
]


def test_an_experiment_for_every_paper_row():
    assert set(PAPER_ROWS) <= set(EXPERIMENTS)
    assert {f"fmnist_{m}" for m in BY_NAME} <= set(EXPERIMENTS)


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
    assert cls.__name__ == BY_NAME[family].module
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
        ("teacher.init=orthogonal", "teacher.init='orthogonal'"),
        ("teacher.attn_bias=relative", "teacher.attn_bias='relative'"),
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
    cfg = make_cfg("experiment=fmnist_vit", "model._target_=winft_lightning.lit.modules.Nope")
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


# The paper's rows, composed from the `recipe` x `backbone` x `model` groups by thin experiment
# files. The table was read from the experiment files as they were before being composed (each
# spelled out in full); any drift in a group or a thin file shows up here.
PAPER_RECIPES = {
    "imagenet_paper": {
        "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01,
                      "momentum": 0.9, "weight_decay": 0.0},
        "trainer": {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed",
                    "max_epochs": 15, "max_steps": None, "accumulate_grad_batches": 8},
        "data": {"name": "imagenet", "num_classes": 1000, "batch_size": 64},
        "warmup_steps": 500,
        "teacher_epochs": 15,
    },
    "cub_paper": {
        "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.03,
                      "momentum": 0.9, "weight_decay": 0.0},
        "trainer": {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed",
                    "max_epochs": -1, "max_steps": 20000, "accumulate_grad_batches": 1},
        "data": {"name": "cub", "num_classes": 200, "batch_size": 16},
        "warmup_steps": 500,
        "teacher_epochs": 50,
    },
}  # fmt: skip
# backbone -> (timm model_name, img_size, patch_size, env var of the 21k-pretrained weights)
PAPER_BACKBONES = {
    "b16_224": ("vit_base_patch16_224", 224, 16, "WINFT_PRETRAINED_B16_224"),
    "b16_384": ("vit_base_patch16_384", 384, 16, "WINFT_PRETRAINED_B16_384"),
    "b32_224": ("vit_base_patch32_224", 224, 32, "WINFT_PRETRAINED_B32_224"),
    "b32_384": ("vit_base_patch32_384", 384, 32, "WINFT_PRETRAINED_B32_384"),
    "b16_448": ("vit_base_patch16_384", 448, 16, "WINFT_PRETRAINED_B16_384"),
}
# method -> the row's alpha / beta / lambdas (absent keys are absent from the config); the
# method's module is the family table's (winft_lightning.core.families)
PAPER_METHODS = {
    "vit": {},
    "awd_vit": {"alpha": 0.1},
    "awd_dip_vit": {"alpha": 0.1, "beta": 0.2},
    "winft": {"alpha": 0.1, "beta": 0.0, "lambda1": 1.0, "lambda2": 1.0},
}
PRETRAINED_ENV = sorted({env for *_, env in PAPER_BACKBONES.values()})


def paper_row(name: str) -> tuple[str, str, str]:
    """(method, backbone, recipe) of a paper row's name, e.g. winft_b16_448_cub."""
    recipe = "cub_paper" if name.endswith("_cub") else "imagenet_paper"
    method, patch, res = name.removesuffix("_cub").rsplit("_", 2)
    return method, f"{patch}_{res}", recipe


def paper_row_expected(name: str, env: dict[str, str]) -> dict:
    """What the composed, resolved config of a paper row holds (env: WINFT_PRETRAINED_* set)."""
    method, backbone, recipe = paper_row(name)
    rec, (model_name, img, patch, var) = PAPER_RECIPES[recipe], PAPER_BACKBONES[backbone]
    module, extras = BY_NAME[method].module, PAPER_METHODS[method]
    net = {"model_name": model_name, "img_size": img, "patch_size": patch,
           "num_classes": rec["data"]["num_classes"], "embed_dim": None, "depth": None,
           "num_heads": None, "checkpoint": env.get(var), "pretrained": False,
           "drop_path_rate": 0.0}  # fmt: skip
    return {
        "task_name": name,
        "tags": [rec["data"]["name"], method, *backbone.split("_")],
        "module": f"winft_lightning.lit.modules.{module}",
        "net": net,
        "teacher_net": net,
        "optimizer": rec["optimizer"],
        "trainer": rec["trainer"],
        "data": rec["data"],
        "warmup_steps": rec["warmup_steps"],
        "teacher_epochs": rec["teacher_epochs"],
        "method": extras,
    }


def paper_row_observed(plain: dict) -> dict:
    """The same fields read from a resolved config (OmegaConf.to_container(resolve=True))."""
    model, trainer, data = plain["model"], plain["trainer"], plain["data"]
    return {
        "task_name": plain["task_name"],
        "tags": plain["tags"],
        "module": model["_target_"],
        "net": model["net"],
        "teacher_net": plain["teacher"]["model"]["net"],
        "optimizer": plain["optimizer"],
        "trainer": {k: trainer.get(k) for k in PAPER_RECIPES["imagenet_paper"]["trainer"]},
        "data": {k: data[k] for k in PAPER_RECIPES["imagenet_paper"]["data"]},
        "warmup_steps": model["scheduler"]["warmup_steps"],
        "teacher_epochs": plain["teacher"]["max_epochs"],
        "method": {k: model[k] for k in ("alpha", "beta", "lambda1", "lambda2") if k in model},
    }


def test_paper_table_covers_every_row():
    rows = {f"{m}_{b}" for m in PAPER_METHODS for b in PAPER_BACKBONES if b != "b16_448"}
    assert rows | {"vit_b16_448_cub", "winft_b16_448_cub"} == set(PAPER_ROWS)


@pytest.mark.parametrize("name", PAPER_ROWS)
def test_paper_row_composes_to_the_papers_recipe(make_cfg, monkeypatch, name):
    for var in PRETRAINED_ENV:
        monkeypatch.delenv(var, raising=False)
    plain = OmegaConf.to_container(make_cfg(f"experiment={name}"), resolve=True)
    assert paper_row_observed(plain) == paper_row_expected(name, {})
    env = {var: f"/weights/{var.lower()}.npz" for var in PRETRAINED_ENV}
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    plain = OmegaConf.to_container(make_cfg(f"experiment={name}"), resolve=True)
    assert paper_row_observed(plain) == paper_row_expected(name, env)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_files_are_thin(name):
    """An experiment picks its groups (recipe, backbone, model) and names itself; no copies."""
    text = (CONF_DIR / "experiment" / f"{name}.yaml").read_text()
    assert len(text.splitlines()) <= 15, f"{name}.yaml: compose it from the groups"
    assert "/recipe:" in text and "/backbone:" in text and "override /model:" in text


def test_one_family_table():
    """modules.MODULES and the study read the family table (winft_lightning.core.families)."""
    from winft_lightning.lit.modules import MODULES, ViTModule
    from winft_lightning.stages import study_report as study

    assert list(MODULES) == list(BY_NAME) == ["vit", "awd_vit", "awd_dip_vit", "winft"]
    for name, cls in MODULES.items():
        assert cls.__name__ == BY_NAME[name].module and issubclass(cls, ViTModule)
    assert tuple(BY_NAME) == study.FAMILIES
    assert {f.module: f.name for f in BY_NAME.values()} == study.MODULE_FAMILY
    assert study.LABELS["awd_dip_vit"] == "AWD+DIP ViT"
