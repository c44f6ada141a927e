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

import json
import math
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf, open_dict

from conftest import CONF_DIR

README = Path(__file__).resolve().parents[1] / "README.md"
# the primary config of each CLI (the config_name of its @hydra.main)
CONFIG_OF = {
    "winft_lightning": "train",
    "winft_lightning.prepare": "prepare",
    "winft_lightning.analyze": "analyze",
    "winft_lightning.visualize": "visualize",
    "winft_lightning.study": "study",
}
MULTIRUN_FLAGS = ("-m", "--multirun")
# README holds 15 such commands, 5 of them sweeps (4 run here): the extractor must not
# silently find fewer
MIN_COMMANDS = 15
MIN_SWEEPS = 5
MIN_RUNNABLE = 4


@dataclass(frozen=True)
class Command:
    line: int  # README line the command starts on
    text: str  # as written, continuations joined, comment dropped
    launcher: str  # "python" or "torchrun"
    module: str
    args: tuple[str, ...]  # everything after the module

    @property
    def multirun(self) -> bool:
        return any(a in MULTIRUN_FLAGS for a in self.args)

    @property
    def overrides(self) -> list[str]:
        """The Hydra overrides: ``-m``/``--multirun`` stripped."""
        return [a for a in self.args if a not in MULTIRUN_FLAGS]

    @property
    def id(self) -> str:
        shown = re.sub(r"\s+", " ", self.text)
        return f"L{self.line}: {shown[:110]}"


def bash_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, logical line) of every ```bash block: a trailing backslash joins
    the next line, a ``#`` that starts a word starts a comment (as in bash)."""
    out: list[tuple[int, str]] = []
    block: str | None = None
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        fence = re.fullmatch(r"\s*```\s*([\w+-]*)\s*", raw)
        if fence:
            if block is None:
                block = fence.group(1)
            else:
                assert pending is None, f"README line {pending[0]}: continuation runs off its block"
                block = None
            continue
        if block != "bash":
            continue
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        start, head = pending if pending else (number, "")
        if line.endswith("\\"):
            pending = (start, head + line[:-1] + " ")
            continue
        pending = None
        if (head + line).strip():
            out.append((start, (head + line).strip()))
    assert block is None, "README.md ends inside a code block"
    return out


def parse_command(number: int, line: str) -> Command | None:
    """The command if ``line`` runs a winft_lightning module, else None."""
    tokens = shlex.split(line)
    while tokens and re.match(r"[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):  # VAR=value cmd
        tokens.pop(0)
    if not tokens or "-m" not in tokens[1:]:
        return None
    exe = Path(tokens[0]).name
    if exe == "torchrun":
        launcher = "torchrun"
    elif re.fullmatch(r"python(3(\.\d+)?)?", exe):
        launcher = "python"
    else:
        return None
    i = tokens.index("-m", 1)
    if i + 1 >= len(tokens) or tokens[i + 1].split(".")[0] != "winft_lightning":
        return None
    return Command(number, " ".join(tokens), launcher, tokens[i + 1], tuple(tokens[i + 2 :]))


def readme_commands(text: str) -> list[Command]:
    return [c for n, line in bash_lines(text) if (c := parse_command(n, line))]


COMMANDS = readme_commands(README.read_text())
SWEEPS = [c for c in COMMANDS if c.multirun]


def is_slurm(cmd: Command) -> bool:
    return any(a.startswith("hydra/launcher=submitit_slurm") for a in cmd.args)


# ----------------------------------------------------------------------------- composing


def compose_cli(config_name: str, overrides: list[str], cwd: Path) -> DictConfig:
    """Compose as the CLI would (``hydra`` node included), with Hydra's runtime fields set so
    that ``${hydra:...}`` resolves, then resolve every interpolation of the whole config."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(cwd / "outputs" / "readme-run")
        cfg.hydra.runtime.cwd = str(cwd)
        cfg.hydra.job.name = "readme"
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    OmegaConf.to_container(cfg, resolve=True)  # a bad interpolation raises here
    return cfg


def sweep_jobs(overrides: list[str], task_only: bool = False) -> list[list[str]]:
    """The override lists of the jobs a basic-sweeper multirun launches, in launch order;
    ``task_only``: without the ``hydra`` overrides, as a job records them."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    if task_only:
        parsed = [o for o in parsed if not o.is_hydra_override()]
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def first_value(key: str, spec: str) -> str:
    """One value of an Optuna search-space entry (``choice(...)``, ``interval(a, b)``, ...)."""
    value = OverridesParser.create().parse_override(f"{key}={spec}").value()
    if isinstance(value, ChoiceSweep):
        return str(value.list[0])
    if isinstance(value, (IntervalSweep, RangeSweep)):
        return str(value.start)
    return str(value)


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
    from winft_lightning.train import ConfigError, validate_config

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


# ----------------------------------------------------------------------------- running

RUN_TIMEOUT = 1200
OPTUNA_TRIALS = 3
OPTUNA_EXTRA = [
    f"hydra.sweeper.n_trials={OPTUNA_TRIALS}",
    "hydra.sweeper.sampler.n_startup_trials=2",
]


def is_optuna(cmd: Command) -> bool:
    return any(a.startswith("hparams_search=optuna") for a in cmd.args)


def row_key(override_key: str) -> str | None:
    """The results.json field an override sets (``model.alpha`` -> ``alpha``), if any."""
    for prefix in ("model.net.", "model."):
        if override_key.startswith(prefix) and "." not in override_key[len(prefix) :]:
            return override_key[len(prefix) :]
    return None


RUNNABLE = [
    pytest.param(c, id=c.id, marks=pytest.mark.slow)
    for c in SWEEPS
    if c.launcher == "python" and c.module == "winft_lightning" and not is_slurm(c)
]


def run_sweep(module: str, args: list[str], cwd: Path) -> tuple[Path, list[Path]]:
    """Run ``python -m module args`` in ``cwd`` (no WINFT_ROOT); its sweep dir and job dirs."""
    env = {k: v for k, v in os.environ.items() if k != "WINFT_ROOT"}
    env |= {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])
    sweeps = sorted((cwd / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 1, sweeps  # one sweep dir, under the working directory's outputs/
    jobs = sorted((p for p in sweeps[0].iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return sweeps[0], jobs


@pytest.mark.parametrize("cmd", RUNNABLE)
def test_readme_sweep_runs_as_written(cmd: Command, tmp_path):
    extra = ["debug=tiny", *(OPTUNA_EXTRA if is_optuna(cmd) else [])]
    sweep, jobs = run_sweep(cmd.module, [*cmd.args, *extra], tmp_path)
    # the jobs' override lists (Optuna draws its own)
    expected = (
        [None] * OPTUNA_TRIALS if is_optuna(cmd) else sweep_jobs([*cmd.overrides, *extra], True)
    )
    assert [p.name for p in jobs] == [str(i) for i in range(len(expected))]

    rows = []
    for job, overrides in zip(jobs, expected, strict=True):
        assert not (job / "failed.json").exists(), (job / "failed.json").read_text()
        row = json.loads((job / "results.json").read_text())
        assert math.isfinite(row["top1"]) and math.isfinite(row["val_top1"]), row
        written = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        if overrides is not None:
            assert written == overrides  # the job ran what the sweep meant
        for item in written:  # and its results are of the values it was given
            key, _, value = item.partition("=")
            field = row_key(key)
            if field is not None and field in row:
                assert float(row[field]) == pytest.approx(float(value)), (job, item, row)
        rows.append((row, written))

    # prerequisites were built once each and shared (counted in the store's build records,
    # not in logs): one shard set; one teacher, and one mask set, per distinct teacher config
    # among the jobs (the teacher shares the student's net and optimizer, so a patch-size or
    # lr sweep trains several, an alpha/beta sweep one)
    teachers = set()
    for _, written in rows:
        cfg = compose_cli("train", written, tmp_path)
        teachers.add(json.dumps(OmegaConf.to_container(cfg.teacher, resolve=True), sort_keys=True))
    GlobalHydra.instance().clear()
    builds = [json.loads(s) for s in (tmp_path / "outputs" / "cache" / "builds.jsonl").open()]
    keys = [(b["kind"], b["key"]) for b in builds]
    assert len(keys) == len(set(keys)), keys
    kinds = [k for k, _ in keys]
    assert kinds.count("shards") == 1, keys
    assert kinds.count("teachers") == kinds.count("masks") == len(teachers), keys
    assert len({r["teacher_ckpt"] for r, _ in rows}) == len(teachers)

    if any(a.startswith("hydra/launcher=parallel") for a in cmd.args):
        # the jobs ran at the same time: each started before any other finished
        starts = [(j / ".hydra" / "config.yaml").stat().st_mtime for j in jobs]
        ends = [(j / "results.json").stat().st_mtime for j in jobs]
        assert max(starts) < min(ends), (starts, ends)

    if is_optuna(cmd):
        result = OmegaConf.to_container(OmegaConf.load(sweep / "optimization_results.yaml"))
        assert result["name"] == "optuna"
        best = result["best_value"]
        assert isinstance(best, float) and math.isfinite(best), result
        # the sweeper's best is the best job's val/top1 (what main() returns)
        assert best == pytest.approx(max(r["val_top1"] for r, _ in rows))
        params = OmegaConf.load(jobs[0] / ".hydra" / "hydra.yaml").hydra.sweeper.params
        assert set(result["best_params"]) == set(params)
        best_jobs = [w for r, w in rows if r["val_top1"] == pytest.approx(best)]
        assert any(
            all(f"{k}={v}" in w for k, v in result["best_params"].items()) for w in best_jobs
        ), (result, best_jobs)


@pytest.mark.slow
def test_optuna_sweep_goes_on_past_a_failed_trial(tmp_path):
    """A failed job returns None from main() (its error in failed.json): Optuna marks that
    trial failed, runs the rest, and reports the best of those that finished. Only alpha 0.1
    is analysed here, so the trials that draw another alpha fail before any work."""
    args = ["-m", "hparams_search=optuna", "experiment=fmnist_awd_vit", "debug=tiny",
            "analyze.alphas=[0.1]", "hydra.sweeper.n_trials=3",
            "hydra.sweeper.sampler.n_startup_trials=3"]  # fmt: skip
    sweep, jobs = run_sweep("winft_lightning", args, tmp_path)
    assert len(jobs) == 3
    failed = [j for j in jobs if (j / "failed.json").is_file()]
    done = [j for j in jobs if (j / "results.json").is_file()]
    # the sampler (seeded) draws a failing and a running alpha in 3 trials
    assert failed and done and len(failed) + len(done) == 3, (failed, done)
    for job in failed:
        error = json.loads((job / "failed.json").read_text())["error"]
        assert "not among the analysed alphas" in error, error
    result = OmegaConf.load(sweep / "optimization_results.yaml")
    best = max(json.loads((j / "results.json").read_text())["val_top1"] for j in done)
    assert result.best_value == pytest.approx(best)
    assert result.best_params["model.alpha"] == pytest.approx(0.1)
