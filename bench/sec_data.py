"""``data`` section: shard loader images/s (decode + hflip + mask decode, configured workers) vs
the training step's consumption at the same batch; our tar headers against the library's."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.benchlib import (
    ALPHA,
    DIGITS_YAML,
    FMNIST_NET,
    _quiet_lightning,
    build_module,
    timeit_interleaved,
    train_step,
)


def _random_teacher(path: Path) -> Path:
    """A randomly initialised fmnist-sized ViTModule saved as a Lightning checkpoint."""
    from winft_lightning.models.teacher import save_untrained

    torch.manual_seed(0)
    return save_untrained(
        {"_target_": "winft_lightning.lit.modules.ViTModule", "net": FMNIST_NET}, path
    )


def digits_mask_set(tmp: Path, device: torch.device) -> tuple[Path, dict]:
    """Digits shards (``prepare_shards``) analyzed at alpha 0.1 by a random teacher
    (``analyze_shards``) under ``tmp``. Returns (mask set root, timings)."""
    from omegaconf import OmegaConf

    from winft_lightning.stages.analyze import analyze_shards
    from winft_lightning.stages.prepare import prepare_shards

    cfg = OmegaConf.load(DIGITS_YAML)
    cfg.source.limit = {"train": None, "val": 128, "test": 128}  # the loader reads train only
    start = time.perf_counter()
    prepare_shards(cfg.source, tmp / "shards", progress=False)
    prepared = time.perf_counter()
    analyze_shards(
        teacher=_random_teacher(tmp / "teacher.ckpt"),
        shards=tmp / "shards",
        out_dir=tmp / "masks",
        alphas=[ALPHA],
        mean=list(cfg.mean),
        std=list(cfg.std),
        device=device.type,
        progress=False,
    )
    done = time.perf_counter()
    return tmp / "masks", {"prepare_s": prepared - start, "analyze_s": done - prepared}


def tar_speed(shard: Path, repeat: int) -> dict:
    """Microseconds a tar member takes to write (``UstarWriter`` vs webdataset's ``TarWriter``)
    and to read (``read_members`` vs ``tarfile``), over the samples of one real mask shard."""
    import io
    import tarfile

    import webdataset as wds

    from winft_lightning.data.shards import iter_tar
    from winft_lightning.data.ustar import UstarWriter, read_members

    samples = list(iter_tar(shard))
    members = sum(len(m) for _, m in samples)
    raw = shard.read_bytes()

    def write_ours():
        w = UstarWriter(io.BytesIO())
        for key, m in samples:
            w.write(key, m)
        w.close()

    def write_webdataset():
        tw = wds.TarWriter(io.BytesIO(), encoder=False, mtime=0, user="winft", group="winft")
        for key, m in samples:
            tw.write({"__key__": key, **m})
        tw.close()

    def read_ours():
        return list(read_members(io.BytesIO(raw)))

    def read_tarfile():
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            return [tar.extractfile(i).read() for i in tar if i.isreg()]

    fns = {"write_ours": write_ours, "write_webdataset": write_webdataset,
           "read_ours": read_ours, "read_tarfile": read_tarfile}  # fmt: skip
    us = {k: 1e6 * t / members for k, t in timeit_interleaved(fns, repeat).items()}
    return {
        "members": members,
        "members_per_sample": members / len(samples),
        "us_per_member": us,
        "write_ratio": us["write_webdataset"] / us["write_ours"],
        "read_ratio": us["read_tarfile"] / us["read_ours"],
        "ratio_is": "webdataset's or tarfile's microseconds a member / ours",
        "target": "ours at least as fast as the library's (ratio >= 1)",
        "holds": us["write_ours"] <= us["write_webdataset"]
        and us["read_ours"] <= us["read_tarfile"],
    }


def loader_rate(loader, batches: int, warmup: int) -> tuple[float, float]:
    """(images/s over ``batches`` batches after ``warmup``, seconds to the first batch)."""
    start = time.perf_counter()
    first = timed_from = 0.0
    images = 0
    for i, b in enumerate(loader.with_epoch(warmup + batches)):
        if i == 0:
            first = time.perf_counter() - start
        if i == warmup - 1:
            timed_from = time.perf_counter()
        elif i >= warmup:
            images += b["image"].shape[0]
    return images / (time.perf_counter() - timed_from), first


def data_section(device: torch.device, opts: argparse.Namespace) -> dict:
    """Shard loader (decode + hflip + mask decode, configured workers) vs training step rate."""
    from omegaconf import OmegaConf

    from winft_lightning.data.datamodule import ShardDataModule

    fmnist = OmegaConf.load(DIGITS_YAML.with_name("fashion_mnist.yaml"))
    batch, workers = int(fmnist.batch_size), int(fmnist.num_workers)
    warmup, batches = (2, 8) if opts.quick else (3, 30)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        with _quiet_lightning():
            root, build = digits_mask_set(Path(tmp), device)
        dm = ShardDataModule(
            root=root,
            batch_size=batch,
            num_workers=workers,
            img_size=FMNIST_NET["img_size"],
            hflip=True,
            alpha=ALPHA,
            use_masks=True,
            shuffle_buffer=500,
        )
        dm.setup("fit")
        rate, first = loader_rate(dm.train_dataloader(), batches, warmup)
        sample = next(iter(dm.train_dataloader().with_epoch(1)))
        train_count = dm.counts["train"]
        tar = tar_speed(root / "train-000000.tar", opts.repeat)
    data = {k: sample[k].to(device) for k in ("image", "label", "windows", "dip_order")}
    modules = {v: build_module(v, FMNIST_NET, device) for v in ("vit", "awd_dense")}
    times = timeit_interleaved(
        {v: train_step(m, data, device) for v, m in modules.items()}, opts.repeat
    )
    step = {v: batch / t for v, t in times.items()}
    ratio = rate / max(step.values())
    print(
        f"data: loader {rate:.0f} img/s ({workers} workers) vs step {step} img/s "
        f"(ratio {ratio:.2f}); tar headers: write {tar['write_ratio']:.1f}x, "
        f"read {tar['read_ratio']:.1f}x faster than the library's",
        flush=True,
    )
    return {
        "source": "digits (sklearn 8x8, PNG) -> prepare_shards -> analyze_shards",
        "masks": f"AWD windows (alpha {ALPHA}) + DIP order from a random fmnist-sized teacher",
        "train_images": train_count,
        "img_size": FMNIST_NET["img_size"],
        "net": FMNIST_NET,
        "batch": batch,
        "num_workers": workers,
        "augment": "hflip (moves windows and DIP order with the image)",
        **build,
        "warmup_batches": warmup,
        "timed_batches": batches,
        "loader_first_batch_s": first,
        "loader_images_per_s": rate,
        "step_images_per_s": step,
        "ratio": ratio,
        "ratio_is": "loader images/s / fastest training step images/s",
        "target": "loader images/s >= training step images/s at the same batch",
        "holds": ratio >= 1.0,
        "note": "loader and step are timed apart; in a run they share the machine's cores",
        "tar": tar,
    }
