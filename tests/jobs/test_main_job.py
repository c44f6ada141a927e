"""The main job end to end as a user runs it: a real Hydra app in a subprocess, real shards,
a real teacher, real masks, real Trainers, W&B offline, and a Hydra multirun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from helpers import cli
from readme import COMMANDS
from winft_lightning.runtime.machine import summary
from winft_lightning.stages.explore import run_source

pytestmark = pytest.mark.slow

N = 16  # debug=tiny: 16 px images, patch 4


def _pngs_ok(paths: list[Path]) -> None:
    assert paths
    for path in paths:
        with Image.open(path) as im:
            im.verify()


def env_without_root() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "WINFT_ROOT"}
    return env | {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}


def test_no_argument_job_on_digits(tmp_path):
    """`python -m winft_lightning debug=tiny` with its default paths, from an empty working
    directory: the default job (teacher ViT -> analyze -> WinfT -> test both -> table) on
    digits, everything under ./outputs/, every output file present and parseable."""
    res = cli("debug=tiny", cwd=tmp_path, env=env_without_root(), fresh=True)  # as a user types it
    assert res.returncode == 0, res.stderr[-4000:]
    (run_dir,) = (tmp_path / "outputs" / "runs" / "debug_tiny").iterdir()  # <task>/<stamp>
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]  # nothing else written
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["cache", "runs"]
    assert "top-1 %" in res.stdout and "E_O / N²" in res.stdout
    assert str(run_dir) in res.stdout.replace("\n", "")  # the console may fold a long path

    rows = json.loads((run_dir / "results_table.json").read_text())
    teacher, winft = rows
    assert teacher["module"] == "ViTModule" and teacher["eo"] == N * N
    assert winft["module"] == "WinfTModule" and 0 < winft["eo"] < N * N
    assert json.loads((run_dir / "results.json").read_text()) == winft
    for row in rows:
        assert 0 <= row["top1"] <= row["top5"] <= 100 and row["images_per_s"] > 0
    md = (run_dir / "results.md").read_text().splitlines()
    assert md[0].startswith("| run | top-1 %") and md[2 + len(rows)] == ""
    # the same seeds give other numbers on another CPU: every row says which machine it ran on
    isa = torch.backends.cpu.get_cpu_capability()
    assert all(row["machine"]["cpu_isa"] == isa for row in rows)
    assert md[3 + len(rows) :] == [f"Measured on {summary(winft['machine'])}."]
    assert f", {isa}), " in md[-1] and md[-1] in res.stdout.splitlines()
    assert Path(winft["best_ckpt"]).is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    metrics = (run_dir / "csv" / "version_0" / "metrics.csv").read_text()
    assert "train/bce" in metrics and "test/eo" in metrics
    figs = sorted((run_dir / "figures").glob("*.png"))
    names = {p.stem for p in figs}
    assert names == {"img0_windows", "img0_responsive_field"}  # debug=tiny draws one image
    _pngs_ok(figs)
    # the explorer of the drawn images; what `explore run=<run dir>` reads from the run dir
    assert (run_dir / "figures" / "explorer.html").is_file()
    src = run_source(run_dir)
    assert (src.teacher, src.winft) == (Path(winft["teacher_ckpt"]), Path(winft["best_ckpt"]))
    assert (src.shards, src.alpha) == (Path(winft["mask_root"]), winft["alpha"])
    # README's explore command on the task folder, as written, in the same directory
    (explore,) = [c for c in COMMANDS if c.module.endswith(".explore") and "run=" in c.text]
    shown = cli(*explore.args, module=explore.module, cwd=tmp_path, env=env_without_root())
    assert shown.returncode == 0, shown.stderr[-4000:]
    (page,) = (tmp_path / "outputs" / "explorer").rglob("explorer.html")
    html = page.read_text()
    assert 'id="explorer-data"' in html and "://" not in html and str(page) in shown.stdout
    # the teacher's own run keeps its logs and figures (a full-attention model: its own U)
    teacher_run = Path(teacher["run_dir"])
    assert (teacher_run / "csv" / "version_0" / "metrics.csv").is_file()
    assert (teacher_run / "figures" / "img0_uncertainty_rows.png").is_file()
    assert (teacher_run / "figures" / "explorer.html").is_file()
    # the teacher was its own job: its config names its own model, seed and run dir
    job = yaml.safe_load((teacher_run / "job.yaml").read_text())
    assert job["task_name"] == "teacher" and job["model"]["_target_"].endswith("ViTModule")
    assert job["seed"] == 0 and job["trainer"]["max_epochs"] == 2  # debug=tiny's teacher
    built_in = Path(job["paths"]["output_dir"])  # the store's build dir, published as teacher_run
    assert built_in.name == "run" and built_in.parent.name == f".build-{teacher_run.parent.name}"
    handed = Path(job["data"]["root"])  # the stage was handed the shard set's path
    assert handed.parent.name == "shards" and (handed / "manifest.json").is_file()
    assert not (run_dir / "csv" / "version_1").exists()

    # a second run reuses the cached shards, teacher and masks, and says so
    again = cli("debug=tiny", cwd=tmp_path, env=env_without_root())
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    for what in ("shards", "teacher", "masks"):
        assert f"{what}: reusing cached" in log


def test_wandb_without_login_runs_offline_and_logs_everything(tmp_path):
    """No WANDB_MODE, no API key, no ~/.netrc: the run goes offline by itself (no hang) and the
    offline W&B run holds the config, the metrics and the figures."""
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WINFT_ROOT=str(tmp_path), HYDRA_FULL_ERROR="1")
    argv = [sys.executable, "-m", "winft_lightning", "experiment=fmnist_winft", "debug=tiny",
            "logger=wandb", "trainer.max_epochs=1", "teacher.max_epochs=1",
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "logging offline" in res.stdout + res.stderr
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    run_id = (run_dir / "wandb_id.txt").read_text()
    assert wandb_run.name.endswith(run_id)
    # the run's record stream (protobuf; its strings are stored as they are): the config, the
    # metrics of every stage and the figures' keys
    stream = (wandb_run / f"run-{run_id}.wandb").read_bytes()
    for key in (b"WinfTModule", b"val/top1", b"train/bce", b"results/top1",
                b"figures/img0_responsive_field", b"figures/explorer"):  # fmt: skip
        assert key in stream, key
    # the explorer as an HTML panel, offline, unchanged (no stylesheet injected from the web)
    (panel,) = (wandb_run / "files" / "media" / "html").rglob("*.html")
    assert 'id="explorer-data"' in panel.read_text() and "://" not in panel.read_text()
    media = sorted((wandb_run / "files" / "media" / "images").rglob("*.png"))
    assert any("responsive_field" in p.name for p in media), media
    _pngs_ok(media)
