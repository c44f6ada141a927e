"""The fixtures, and only fixtures (and pytest hooks): the project's Hydra configs composed the
way the CLI does, into tmp_path; real digits shard sets, a tiny untrained teacher and its mask
set (session-scoped, built once); a real one-node SLURM cluster (``slurm_cluster.py``). Plain
helpers live in ``helpers.py``; nothing imports this file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Two xdist workers fill the 2 cores: each test process, and every process a test starts,
# computes with one thread. Tiny nets gain nothing from a second one, and threads that contend
# for a core spin (measured: a debug=tiny job took 20.8 s of CPU with 2 threads, 11.4 s with 1).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first: the two workers share the long runs early, and the many short
    tests fill the gaps at the end (the suite lasts as long as its busier worker)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny ViTs run ~100x slower when 2 intra-op threads contend with other work on 2 cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    from helpers import compose_config  # here, not above: torch comes after OMP_NUM_THREADS

    def make(*overrides: str, run_dir: Path | None = None) -> DictConfig:
        return compose_config(list(overrides), tmp_path, run_dir=run_dir)

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory) -> Path:
    """200/40/60 digits in shards of 25: 8 train, 2 val, 3 test shards."""
    from helpers import DIGITS
    from winft_lightning.stages.prepare import prepare_shards

    out = tmp_path_factory.mktemp("digits") / "shards"
    prepare_shards(DIGITS, out, progress=False)
    return out


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory) -> Path:
    """An untrained tiny teacher (``helpers.untrained_teacher``: the weights of ``tiny_vit()``,
    16 px, patch 4: grid 4x4, N = 16), plus the datamodule normalisation a trained teacher's
    checkpoint carries."""
    import torch

    from helpers import untrained_teacher

    path = untrained_teacher(tmp_path_factory.mktemp("teacher") / "teacher.ckpt")
    ckpt = torch.load(path, weights_only=True)
    dm = {"root": "/somewhere", "mean": [0.3053] * 3, "std": [0.3759] * 3, "img_size": 16}
    torch.save(ckpt | {"datamodule_hyper_parameters": dm}, path)
    return path


@pytest.fixture(scope="session")
def claims_teacher(tmp_path_factory, digits_shards) -> Path:
    """A tiny teacher trained for 150 steps on the 200 training digits
    (``helpers.trained_teacher``): the claims tests' real, if tiny, teacher."""
    from helpers import trained_teacher

    return trained_teacher(tmp_path_factory.mktemp("claims_teacher") / "teacher.ckpt",
                           digits_shards)  # fmt: skip


@pytest.fixture(scope="session")
def analyzed_shards(tmp_path_factory, digits_shards, teacher_ckpt) -> Path:
    """The digits shard set analyzed by ``teacher_ckpt`` at alphas 0.1 and 0.5."""
    from winft_lightning.stages.analyze import analyze_shards

    out = tmp_path_factory.mktemp("analyzed") / "masks"
    analyze_shards(
        teacher=teacher_ckpt,
        shards=digits_shards,
        out_dir=out,
        alphas=[0.1, 0.5],
        batch_size=32,
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node SLURM cluster (munged, slurmctld, slurmd; ``slurm_cluster.py``) for the
    session, stopped at its end. Skipped only where SLURM is not installed or this is not root
    (``make install`` installs it as root)."""
    from slurm_cluster import missing, start_cluster

    why = missing()
    if why:
        pytest.skip(why)
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()
