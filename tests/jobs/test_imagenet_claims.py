"""``study=imagenet_claims`` as README writes it: the training-free claims on the user's own
ViT-B/16 at 224 (here random weights saved as timm's safetensors) over an ImageNet-style tree
($WINFT_IMAGENET/{train,val}/<class>/), end to end on CPU with a few images."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import timm
from PIL import Image
from safetensors.torch import save_file

from helpers import cli

pytestmark = pytest.mark.slow


def imagenet_tree(root, classes=3, per_class=3):
    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("val", per_class)):
        for c in range(classes):
            folder = root / split / f"n0000{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (40 + 8 * c, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img_{i}.JPEG", format="JPEG")
    return root


def test_imagenet_claims_runs_on_a_user_weights_file(tmp_path):
    tree = imagenet_tree(tmp_path / "imagenet")
    weights = tmp_path / "vit_b16_224.safetensors"
    net = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=3)
    save_file(net.state_dict(), weights)
    res = cli(
        "study=imagenet_claims",
        f"study.claims.teachers.ckpts=[{weights}]",
        # CPU-sized: 2 of the 9 images, one alpha and one beta (the GPU run keeps the defaults)
        "study.claims.limit=2",
        "study.claims.alphas=[0.1]",
        "study.claims.keep_alphas=[0.1]",
        "study.claims.betas=[0.5]",
        "study.claims.batch_size=2",
        "study.claims.num_workers=0",
        "study.claims.randomisation_null.depths=[12]",  # SPEC 10's null: trained, all, cascade:12
        f"paths.root_dir={tmp_path}",
        env={**os.environ, "WINFT_IMAGENET": str(tree), "WANDB_MODE": "offline"},
        module="winft_lightning.study",
        timeout=600,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    out = tmp_path / "outputs" / "study" / "imagenet_claims" / "claims"
    facts = json.loads((out / "facts.json").read_text())
    (p,) = facts["passes"]
    assert p["N"] == 196 and p["grid"] == [14, 14] and p["images"] == 2  # of ImageNet's val
    assert (
        p["teacher"]["path"] == str(weights)
        and p["teacher"]["model_name"] == "vit_base_patch16_224"
    )
    assert p["teacher"]["net"]["num_classes"] == 3  # the file's head, not data.num_classes
    assert p["source"]["splits"]["test"] == "val" and p["split_images"] == 9
    report = (out / "report.md").read_text()
    assert "N = 196" in report and "## Verdicts" in report
    (null,) = facts["null"]["passes"]  # the plain weights file's null, read with its net
    assert null["images"] == 2 and null["variants"] == ["trained", "all", "cascade:12"]
    assert "## Randomisation null (SPEC 10)" in report
    profile = json.loads((out / "claims.json").read_text())["attention_profile"]
    assert len(profile["0"]["blocks"]) == 12 and len(profile["0"]["blocks"][0]) == 12
    # the shards hold one train image: ImageNet's train split is never copied
    shards = json.loads(
        (tmp_path / "outputs" / "cache" / "shards").glob("*/manifest.json").__next__().read_text()
    )
    assert shards["splits"]["train"]["count"] == 1 and shards["splits"]["test"]["count"] == 9
