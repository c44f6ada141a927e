"""bench/sec_loader.py on a tiny plan: JPEG crops of two photos go through prepare and analyze
into shard and mask sets built once in the store, the training loader reads them at 224 and
384 (masks of N = 196 and 576), and the cores per H100 come from the committed step rates."""

from __future__ import annotations

import json
import math

import torch

from bench import sec_loader
from winft_lightning.data.shards import read_manifest

TINY = sec_loader.Plan(
    per_photo=2, batch=4, warmup=1, batches=3, rounds=1, photos=("astronaut", "coffee")
)


def test_loader_section_measures_every_configuration(tmp_path):
    result = sec_loader.run(tmp_path, TINY, torch.device("cpu"))
    assert set(result["runs"]) == {
        f"{s}_{m}_w{w}" for s in (224, 384) for m in ("no_masks", "masks") for w in (0, 1)
    }
    for name, run in result["runs"].items():
        assert run["images_per_s"] > 0, name
        with_worker = name.endswith("w1")  # its CPU time is the worker's, not this process's
        assert (run["worker_cpu_s_per_image"] > 0) == with_worker, name
    entry = tmp_path / "loader_photos" / result["build"]["entry"].rsplit("/", 1)[1]
    assert not (entry / "tree").exists()  # sharded, the JPEG tree is dropped
    shards = read_manifest(entry / "shards")
    assert shards["splits"]["train"]["count"] == 2  # 2 photos x 2 crops, 2 carved for val
    assert shards["num_classes"] == 2
    for size, side in ((224, 14), (384, 24)):
        masks = read_manifest(entry / f"masks_{size}")
        assert masks["teacher"]["img_size"] == size
        assert list(masks["teacher"]["grid"]) == [side, side]
    assert result["build"]["tree"]["images"] == 6
    assert result["build"]["tree"]["quality"] == sec_loader.QUALITY


def test_cores_per_h100_come_from_the_recorded_step_rates():
    runs = {
        f"{s}_{m}_w{w}": {"images_per_s": 50.0, "images_per_core_s": 100.0 * (w + 1)}
        for s in (224, 384)
        for m in ("no_masks", "masks")
        for w in (0, 1)
    }
    need = sec_loader.cores(runs)
    vit = json.loads((sec_loader.REPO / "bench/results/bench_gpu_h100_2026-11-25.json").read_text())
    head = json.loads(
        (sec_loader.REPO / "bench/results/headline_gpu_h100_2026-11-25.json").read_text()
    )
    steps = {
        "vit_b16_224": vit["overhead"]["lightning_images_per_s"],
        "winft_b16_384": head["gpu"]["fits"][0]["images_per_s_step_only"],
    }
    for recipe, step in steps.items():
        assert need[recipe]["step_images_per_s"] == step
        assert need[recipe]["cores"] == math.ceil(step / 200.0)  # the worker's rate
        assert need[recipe]["cores_one_process_each"] == math.ceil(step / 100.0)
        assert need[recipe]["cores_from_wall_clock"] == math.ceil(step / 50.0)
    assert need["vit_b16_224"]["loader"] == "224_no_masks"
    assert need["winft_b16_384"]["loader"] == "384_masks"
