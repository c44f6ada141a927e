"""trainer=ddp_sim: two CPU processes over gloo train and test a tiny WinfT."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from helpers import NO_FIGURES, cli, compose_config
from winft_lightning.pipeline import prerequisites

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ddp")]

# 600 train samples in six shards of 100: each rank reads three shards per pass
COMMON = ("experiment=fmnist_winft", "debug=tiny", "data.source.maxcount=100", NO_FIGURES)


def read_keys(path: Path) -> tuple[int, dict[int, list[str]]]:
    """(batches, {epoch: sample keys}) of one rank's RankSampleLog file."""
    header, *lines = path.read_text().splitlines()
    by_epoch: dict[int, list[str]] = {}
    for line in filter(None, lines):
        epoch, key = line.split()
        by_epoch.setdefault(int(epoch), []).append(key)
    return int(header.split("=")[1]), by_epoch


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Shards, teacher and masks built once in this process (prerequisites only, no student
    job); the DDP runs find them in the cache."""
    root = tmp_path_factory.mktemp("ddp")
    prerequisites(compose_config(list(COMMON), root))
    GlobalHydra.instance().clear()
    return root


def test_ddp_sim_splits_trains_and_tests_as_one_job(prepared):
    (shards,) = (prepared / "outputs" / "cache" / "shards").glob("[!.]*")
    manifest = json.loads((shards / "manifest.json").read_text())
    train_keys = {f"train_{i:08d}" for i in range(manifest["splits"]["train"]["count"])}
    run_dir = prepared / "ddp"
    res = cli(
        *COMMON, "trainer=ddp_sim", "trainer.devices=2", "trainer.max_epochs=2",
        "callbacks=rank_sample_log", "callbacks.rich_progress_bar=null",
        f"paths.root_dir={prepared}", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert res.returncode == 0, f"rc={res.returncode}\n{res.stderr[-4000:]}"
    assert "masks: reusing cached" in res.stdout + res.stderr
    n0, keys0 = read_keys(run_dir / "rank_samples" / "train_keys_rank0.txt")
    n1, keys1 = read_keys(run_dir / "rank_samples" / "train_keys_rank1.txt")
    assert n0 == n1 > 0  # equal batch counts: no rank waits on a collective forever
    assert sorted(keys0) == sorted(keys1) == [0, 1]
    for epoch in (0, 1):
        seen0, seen1 = keys0[epoch], keys1[epoch]
        assert len(seen0) == len(seen1) == n0 // 2 * 64
        # the ranks split the train set: together they cover it, and they share only the
        # few samples a rank draws again to fill its last batch (equal batch counts)
        assert set(seen0) | set(seen1) == train_keys
        assert len(set(seen0) & set(seen1)) <= len(seen0) + len(seen1) - len(train_keys)
    row = json.loads((run_dir / "results.json").read_text())
    assert row["module"] == "WinfTModule" and 0 < row["eo"] < 16 * 16
    # fit and test ran in separate spawned processes and still share one metrics.csv
    with (run_dir / "csv" / "version_0" / "metrics.csv").open(newline="") as f:
        logged = list(csv.DictReader(f))
    for key in ("train/bce", "val/top1", "test/top1", "test/eo", "results/top1"):
        assert any(r.get(key) for r in logged), key

    # metrics are synchronised: the 2-rank test top-1 equals a 1-process test of the same weights
    from winft_lightning.lit.modules import WinfTModule

    single = cli(
        *COMMON, "train=false", f"paths.root_dir={prepared}",
        f"hydra.run.dir={prepared}/single", f"ckpt_path={row['best_ckpt']}",
        "callbacks.rich_progress_bar=null",
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    one = json.loads((prepared / "single" / "results.json").read_text())
    assert one["top1"] == pytest.approx(row["top1"], abs=1e-6)
    assert WinfTModule.load_from_checkpoint(row["best_ckpt"]).hparams.net["depth"] == 2
    assert torch.distributed.is_available()
