"""analyze: a real tiny teacher over real shards; stored masks equal the direct computation."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import digits_source, untrained_teacher
from winft_lightning import __version__
from winft_lightning.core.capture import iter_block_attention
from winft_lightning.core.interactions import awd_windows, dip_order, uncertainty_map
from winft_lightning.data.datamodule import ShardDataModule
from winft_lightning.data.errors import DataError, MaskError
from winft_lightning.data.masks import decode_mask
from winft_lightning.data.shards import iter_tar, read_manifest
from winft_lightning.models.teacher import file_sha256, load_teacher
from winft_lightning.stages.analyze import analyze_shards, analyzed_dir
from winft_lightning.stages.prepare import prepare_shards

MEAN, STD = (0.3053,) * 3, (0.3759,) * 3


def masks_dm(root, alpha, **kw) -> ShardDataModule:
    args = dict(batch_size=16, num_workers=0, img_size=16, mean=MEAN, std=STD, hflip=False)
    m = ShardDataModule(root, use_masks=True, alpha=alpha, **(args | kw))
    m.setup()
    return m


@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_stored_masks_equal_direct_computation(analyzed_shards, teacher_ckpt, alpha):
    model, _ = load_teacher(teacher_ckpt)
    dm = masks_dm(analyzed_shards, alpha)
    assert dm.grid == (4, 4)
    seen = set()
    for split in ("train", "val", "test"):
        for batch in dm.make_loader(split):
            u = uncertainty_map(iter_block_attention(model, batch["image"]))
            assert batch["windows"].shape == (len(batch["key"]), 16, 4)
            assert batch["windows"].dtype == batch["dip_order"].dtype == torch.long
            torch.testing.assert_close(batch["windows"], awd_windows(u, alpha, (4, 4)))
            torch.testing.assert_close(batch["dip_order"], dip_order(u))
            seen.update(batch["key"])
    assert len(seen) == 300  # every image of every split (train wraps to full batches)


def test_manifest_and_copied_members(analyzed_shards, digits_shards, teacher_ckpt):
    m = read_manifest(analyzed_shards)
    src = read_manifest(digits_shards)
    t = m["teacher"]
    assert t["sha256"] == file_sha256(teacher_ckpt) and t["model_name"] == "vit_tiny_patch16_224"
    assert (t["img_size"], t["patch_size"], t["grid"], t["num_prefix_tokens"]) == (16, 4, [4, 4], 1)
    assert m["alphas"] == [0.1, 0.5] and m["code_version"] == __version__ and m["kind"] == "masks"
    assert m["controls"] == ["random", "centred", "blank"] and m["mask_format"] == 3
    assert m["mask_members"]["controls"] == {
        "random": {"0.1": "awd_random.a0100", "0.5": "awd_random.a0500",
                   "dip_order": "dip_order_random"},
        "centred": {"0.1": "awd_centred.a0100", "0.5": "awd_centred.a0500"},
        "blank": {"dip_order": "dip_order_blank"},
    }  # fmt: skip
    assert m["view"]["mean"] == list(MEAN)  # taken from the teacher checkpoint's datamodule
    assert m["mask_bytes_per_image"] > 0 and m["bitpacked_mask_bytes_per_image"] == 32
    assert m["classes"] == src["classes"]
    for split in ("train", "val", "test"):
        assert m["splits"][split]["shards"] == src["splits"][split]["shards"]
        assert m["splits"][split]["shard_counts"] == src["splits"][split]["shard_counts"]
    name = src["splits"]["val"]["shards"][0]
    before = dict(iter_tar(digits_shards / name))
    after = dict(iter_tar(analyzed_shards / name))
    assert before.keys() == after.keys()
    for key, members in after.items():
        assert members["png"] == before[key]["png"] and members["cls"] == before[key]["cls"]
        assert set(members) == {
            "png",
            "cls",
            "crc",
            "awd.a0100.i16z",
            "awd.a0500.i16z",
            "dip_order.i16z",
            "awd_random.a0100.i16z",  # SPEC 9's retrained controls (tests/data/test_controls.py)
            "awd_random.a0500.i16z",
            "dip_order_random.i16z",
            "awd_centred.a0100.i16z",  # SPEC 10's controls without a teacher
            "awd_centred.a0500.i16z",
            "dip_order_blank.i16z",
        }
        order = decode_mask(members["dip_order.i16z"], "i16z", (16,))
        assert sorted(order.tolist()) == list(range(16))
        assert not any(k.endswith(".npy") and "N" in k for k in members)  # no N x N anywhere
        assert all(len(v) < 16 * 16 for k, v in members.items() if k != "png")


def test_storage_ten_times_smaller_than_bitpacked_at_n576(tmp_path):
    shards = tmp_path / "shards"
    prepare_shards(digits_source(limit={"train": 2, "val": 1, "test": 1}), shards, progress=False)
    ckpt = untrained_teacher(tmp_path / "t96.ckpt", img_size=96)
    alphas = [0.025, 0.05, 0.1, 0.2, 0.5, 1.0]
    m = analyze_shards(ckpt, shards, alphas=alphas, batch_size=4, progress=False)
    assert m["root"] == str(analyzed_dir(shards.resolve(), file_sha256(ckpt), alphas))
    s = m["mask_storage"]
    assert s["num_patches"] == 576 and s["bitpacked_mask_bytes_per_image"] == 41472
    print("\nN=576 mask storage:", json.dumps(s))
    assert s["ratio_one_bitpacked_mask_to_all_mask_keys"] >= 10  # all 6 alphas + DIP
    assert s["bitpacked_mask_bytes_per_image"] / s["mask_bytes_per_image"] >= 10


def test_mask_set_refused_for_other_alpha_or_geometry(analyzed_shards, teacher_ckpt):
    with pytest.raises(MaskError, match=r"alpha=0\.3 is not in .*\[0\.1, 0\.5\]"):
        masks_dm(analyzed_shards, 0.3)
    with pytest.raises(MaskError, match=r"data\.img_size=32"):
        masks_dm(analyzed_shards, 0.1, img_size=32)
    dm = masks_dm(analyzed_shards, 0.1)
    dm.check_geometry({"model_name": "x", "img_size": 16, "patch_size": 4, "grid": [4, 4]})
    with pytest.raises(MaskError, match=r"patch_size: model 8 vs masks 4"):
        dm.check_geometry({"img_size": 16, "patch_size": 8})
    with pytest.raises(MaskError, match=r"img_size: model 32 vs masks 16"):
        dm.check_geometry({"img_size": 32, "patch_size": 4, "num_patches": 64})
    with pytest.raises(MaskError, match=r"teacher sha256: run 000000000000 vs masks"):
        dm.check_geometry({"img_size": 16, "patch_size": 4, "teacher_sha256": "0" * 64})
    with pytest.raises(DataError, match="another teacher"):
        analyze_shards(
            teacher_ckpt, read_manifest(analyzed_shards)["parent"]["root"], analyzed_shards, [0.2]
        )
