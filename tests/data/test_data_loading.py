"""ShardDataModule: batch format, the eval view, rank/worker splitting, epochs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from helpers import decode_png
from winft_lightning.data.datamodule import ShardDataModule
from winft_lightning.data.errors import DataError, ManifestError, MaskError
from winft_lightning.data.shards import iter_tar, read_manifest

MEAN, STD = (0.3, 0.3, 0.3), (0.4, 0.4, 0.4)


def dm(root, **kw) -> ShardDataModule:
    args = dict(batch_size=10, num_workers=0, img_size=16, mean=MEAN, std=STD, hflip=False)
    args.update(kw)
    module = ShardDataModule(root, **args)
    module.setup("fit")
    return module


def keys(batches) -> list[str]:
    return [k for b in batches for k in b["key"]]


def test_batch_format_and_eval_view(digits_shards):
    m = dm(digits_shards)
    assert m.num_classes == 10 and m.counts == {"train": 200, "val": 40, "test": 60}
    assert m.grid is None and m.manifest["root"] == str(digits_shards.resolve())
    batches = list(m.val_dataloader())
    b = batches[0]
    assert set(b) == {"image", "label", "key"}
    assert b["image"].shape == (10, 3, 16, 16) and b["image"].dtype == torch.float32
    assert b["label"].dtype == torch.long and len(b["key"]) == 10
    # the eval view by hand: PNG -> RGB -> resize 8 -> 16 -> normalise
    raw = dict(iter_tar(digits_shards / "val-000000.tar"))
    for i, key in enumerate(b["key"]):
        gray = torch.from_numpy(decode_png(raw[key]["png"]).copy())
        rgb = gray.expand(3, -1, -1)
        view = TF.resize(rgb, 16, antialias=True).float() / 255
        expect = (view - 0.3) / 0.4
        torch.testing.assert_close(b["image"][i], expect)
        assert b["label"][i] == int(raw[key]["cls"])


def test_val_test_each_sample_once_in_order(digits_shards):
    m = dm(digits_shards, eval_batch_size=7)
    for split in ("val", "test"):
        loader = m.make_loader(split)
        first, second = keys(loader), keys(loader)
        assert first == second  # deterministic
        assert first == sorted(first) and len(set(first)) == m.counts[split]
        assert len(loader) == math.ceil(m.counts[split] / 7) == len(list(loader))


@pytest.mark.parametrize("workers", [0, 2])
def test_ddp_ranks_disjoint_equal_batches(digits_shards, workers):
    m = dm(digits_shards, num_workers=workers)
    # val/test: each sample on exactly one rank
    for split in ("val", "test"):
        got = [keys(m.make_loader(split, rank=r, world_size=2)) for r in (0, 1)]
        assert not set(got[0]) & set(got[1])
        assert sorted(got[0] + got[1]) == sorted(set(got[0] + got[1]))
        assert len(got[0]) + len(got[1]) == m.counts[split]
        for r in (0, 1):
            assert len(m.make_loader(split, rank=r, world_size=2)) == len(
                list(m.make_loader(split, rank=r, world_size=2))
            )
    # train: the same number of batches on both ranks, disjoint samples within a pass
    loaders = [m.make_loader("train", rank=r, world_size=2) for r in (0, 1)]
    batches = [list(ld) for ld in loaders]
    assert len(batches[0]) == len(batches[1]) == len(loaders[0]) == math.ceil(200 / (10 * 2))
    assert all(b["image"].shape[0] == 10 for bs in batches for b in bs)
    k0, k1 = set(keys(batches[0])), set(keys(batches[1]))
    assert len(k0) == len(k1) == 100 and not k0 & k1


def test_train_epochs_reshuffle_and_ranks_agree(digits_shards):
    m = dm(digits_shards)
    loader = m.make_loader("train")
    e1, e2 = keys(loader), keys(loader)
    assert sorted(e1) == sorted(e2) and e1 != e2 and len(set(e1)) == 200
    # a fresh module with the same seed replays the same epochs
    again = dm(digits_shards).make_loader("train")
    assert keys(again) == e1
    other = dm(digits_shards, seed=1).make_loader("train")
    assert keys(other) != e1


def test_few_shards_many_slots_split_by_sample(digits_shards):
    # val has 2 shards; 2 ranks x 2 workers = 4 slots > 2 shards: samples are dealt by index
    m = dm(digits_shards, num_workers=2)
    got = [keys(m.make_loader("val", rank=r, world_size=2)) for r in (0, 1)]
    assert sorted(got[0] + got[1]) == sorted({*got[0], *got[1]}) and len(got[0] + got[1]) == 40
    assert len(got[0]) == len(got[1]) == 20


def test_hflip_flips_some_images_only_in_train(digits_shards):
    m = dm(digits_shards, hflip=True)
    plain = {
        k: im
        for b in dm(digits_shards).make_loader("train")
        for k, im in zip(b["key"], b["image"], strict=True)
    }
    flipped = same = 0
    for b in m.make_loader("train"):
        for k, im in zip(b["key"], b["image"], strict=True):
            if torch.equal(im, plain[k]):
                same += 1
            else:
                torch.testing.assert_close(im, plain[k].flip(-1))
                flipped += 1
    assert flipped > 50 and same > 50
    # augmentation never reaches the evaluated splits: every val/test image as without hflip
    for split, count in (("val", 40), ("test", 60)):
        unflipped = {
            k: im
            for b in dm(digits_shards).make_loader(split)
            for k, im in zip(b["key"], b["image"], strict=True)
        }
        seen = 0
        for b in m.make_loader(split):
            for k, im in zip(b["key"], b["image"], strict=True):
                assert torch.equal(im, unflipped[k]), (split, k)
                seen += 1
        assert seen == len(unflipped) == count


def test_config_errors_name_the_problem(digits_shards, tmp_path):
    with pytest.raises(ManifestError, match=r"no manifest\.json"):
        dm(tmp_path)
    with pytest.raises(DataError, match=r"data\.root is not set"):
        dm(None)
    with pytest.raises(MaskError, match="carries no masks"):
        dm(digits_shards, use_masks=True, alpha=0.1)
    with pytest.raises(MaskError, match="random_resized_crop"):
        ShardDataModule(digits_shards, use_masks=True, alpha=0.1, random_resized_crop=True)
    with pytest.raises(DataError, match="num_classes=7"):
        dm(digits_shards, num_classes=7)
    with pytest.raises(ValueError, match="on_corrupt"):
        ShardDataModule(digits_shards, on_corrupt="ignore")


def test_random_resized_crop_without_masks(digits_shards):
    m = dm(digits_shards, random_resized_crop=True, rrc_scale=(0.3, 1.0))
    b = next(iter(m.train_dataloader()))
    assert b["image"].shape == (10, 3, 16, 16) and torch.isfinite(b["image"]).all()
    manifest = read_manifest(digits_shards)
    assert np.sum(manifest["splits"]["train"]["shard_counts"]) == 200
