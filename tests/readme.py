"""README.md's commands, read from the file itself: ``bash`` blocks, continuation lines
joined, ``#`` comments dropped; each parsed into a :class:`Command`."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from omegaconf import DictConfig, OmegaConf, open_dict

from helpers import CONF_DIR, REPO

README = REPO / "README.md"
# the primary config of each CLI (the config_name of its @hydra.main)
CONFIG_OF = {
    "winft_lightning": "train",
    "winft_lightning.prepare": "prepare",
    "winft_lightning.analyze": "analyze",
    "winft_lightning.visualize": "visualize",
    "winft_lightning.explore": "explore",
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


def is_optuna(cmd: Command) -> bool:
    return any(a.startswith("hparams_search=optuna") for a in cmd.args)


RUNNABLE = [
    pytest.param(c, id=c.id, marks=pytest.mark.slow)
    for c in SWEEPS
    if c.launcher == "python" and c.module == "winft_lightning" and not is_slurm(c)
]
