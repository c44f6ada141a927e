"""README.md's commands work as written.

Every ``python -m winft_lightning[.stage] ...`` and ``torchrun ... -m winft_lightning ...``
command in README.md's ```bash blocks is read from the file itself (continuation lines
joined, ``#`` comments dropped) and composed against its CLI's primary config with Hydra's
compose API, ``hydra`` config included: an unknown key fails. A sweep (``-m``) is expanded
into its jobs as Hydra's basic sweeper expands it and each job is composed; an Optuna sweep
composes one trial of its search space. Every sweep is also run as written (slow), from a
fresh empty working directory with no ``hydra.sweep.dir`` and no ``paths.root_dir``, with
only ``debug=tiny`` appended (and a small ``n_trials`` for Optuna).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from readme import (
    COMMANDS,
    CONFIG_OF,
    MIN_COMMANDS,
    MIN_RUNNABLE,
    MIN_SWEEPS,
    README,
    RUNNABLE,
    SWEEPS,
    Command,
    bash_lines,
    compose_cli,
    first_value,
    readme_commands,
    sweep_jobs,
)


@pytest.fixture
def fresh_cwd(tmp_path, monkeypatch) -> Path:
    """An empty working directory, no WINFT_ROOT: where a new user starts."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WINFT_ROOT", raising=False)
    return tmp_path


def test_readme_commands_are_found():
    assert len(COMMANDS) >= MIN_COMMANDS, [c.text for c in COMMANDS]
    assert len(SWEEPS) >= MIN_SWEEPS, [c.text for c in SWEEPS]
    assert len(RUNNABLE) >= MIN_RUNNABLE, [p.values[0].text for p in RUNNABLE]
    assert {c.launcher for c in COMMANDS} == {"python", "torchrun"}
    assert {"winft_lightning.prepare", "winft_lightning.analyze", "winft_lightning.visualize"} <= {
        c.module for c in COMMANDS
    }
    # nothing in a bash block that runs the package escapes the extractor
    mentions = [n for n, line in bash_lines(README.read_text()) if "-m winft_lightning" in line]
    assert mentions == [c.line for c in COMMANDS]


def test_extractor_joins_continuations_and_drops_comments():
    text = "\n".join(
        [
            "```bash",
            "# python -m winft_lightning commented=out",
            "python -m winft_lightning a=1 \\",
            "    b=2   # c=3",
            "WANDB_MODE=offline python -m winft_lightning.prepare x=a#b",
            "make test",
            "```",
            "```python",
            "python -m winft_lightning not=bash",
            "```",
            "```bash",
            "torchrun --nproc_per_node=2 -m winft_lightning -m d=4,5",
            "```",
        ]
    )
    got = [(c.line, c.launcher, c.module, c.args) for c in readme_commands(text)]
    assert got == [
        (3, "python", "winft_lightning", ("a=1", "b=2")),
        (5, "python", "winft_lightning.prepare", ("x=a#b",)),
        (12, "torchrun", "winft_lightning", ("-m", "d=4,5")),
    ]
    assert readme_commands(text)[-1].overrides == ["d=4,5"]


def test_an_unknown_key_does_not_compose(fresh_cwd):
    """What makes the composing tests mean something: struct mode refuses unknown keys, in the
    app's config and in Hydra's own."""
    with pytest.raises(ConfigCompositionException, match="root"):
        compose_cli("train", ["experiment=winft_b16_384", "data.source.root=/data/x"], fresh_cwd)
    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        compose_cli("train", ["hydra.launcher.no_such_key=1"], fresh_cwd)
    with pytest.raises(ConfigCompositionException):
        compose_cli("prepare", ["data=imagefolder", "data.source.root=/data/cub"], fresh_cwd)
    compose_cli("prepare", ["data=imagefolder", "data.source.path=/data/cub"], fresh_cwd)


def test_plain_ddp_over_several_devices_is_refused(fresh_cwd, monkeypatch):
    """README (Many processes): trainer=ddp with several devices outside torchrun/srun stops
    before any work, naming the ways out; trainer=ddp_sim (spawn) is not refused."""
    from winft_lightning.stages.validate import ConfigError, validate_config

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for name in ("WORLD_SIZE", "RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    ddp = ["experiment=fmnist_awd_vit", "trainer=ddp", "trainer.accelerator=cpu"]
    cfg = compose_cli("train", [*ddp, "trainer.devices=2"], fresh_cwd)
    with pytest.raises(ConfigError, match=r"torchrun.*ddp_sim"):
        validate_config(cfg)
    validate_config(compose_cli("train", [*ddp, "trainer.devices=1"], fresh_cwd))
    validate_config(
        compose_cli("train", ["experiment=fmnist_awd_vit", "trainer=ddp_sim"], fresh_cwd)
    )
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.id)
def test_readme_command_composes(cmd: Command, fresh_cwd):
    assert cmd.module in CONFIG_OF, f"README runs {cmd.module}: no primary config known for it"
    config_name = CONFIG_OF[cmd.module]
    unknown_flags = [a for a in cmd.overrides if a.startswith("-")]
    assert not unknown_flags, f"flags this test does not model: {unknown_flags}"
    jobs = sweep_jobs(cmd.overrides) if cmd.multirun else [cmd.overrides]
    if not cmd.multirun:
        swept = [o.input_line for o in OverridesParser.create().parse_overrides(cmd.overrides)
                 if o.is_sweep_override()]  # fmt: skip
        assert not swept, f"sweep values without -m: {swept}"
    for job in jobs:
        cfg = compose_cli(config_name, job, fresh_cwd)
        if config_name != "train":
            continue
        # a fresh working directory holds every output, with nothing set to put it there
        key = "hydra.sweep.dir" if cmd.multirun else "hydra.run.dir"
        where = Path(OmegaConf.select(cfg, key))
        assert where.is_relative_to(fresh_cwd / "outputs"), (key, where)
        sweeper = OmegaConf.select(cfg, "hydra.sweeper._target_")
        if cmd.multirun and "optuna" in sweeper.lower():
            # one trial: every searched key exists and takes a value of its search space
            params = cfg.hydra.sweeper.params
            assert params, "an Optuna sweep with no search space"
            trial = [f"{k}={first_value(k, v)}" for k, v in params.items()]
            compose_cli(config_name, [*job, *trial], fresh_cwd)
    GlobalHydra.instance().clear()
