"""``loader`` section: the training loader's images/s on one core, for ImageNet-like JPEGs at
224 and 384 px, with and without the stored AWD/DIP masks; from it and the H100's recorded
step rates, the loader cores one H100 needs per recipe.

The photos: scikit-image's colour photos, each cut into random crops re-encoded as JPEG at
ImageNet's usual sizes (500 x 375, 500 x 333, 375 x 500), quality 90, in an ImageFolder tree
(one class a photo). ``prepare_shards`` writes them into WebDataset shards; ``analyze_shards``
with a randomly initialised tiny timm ViT (patch 16) writes the masks at 224 (N = 196) and 384
(N = 576): the masks' content does not change the loader's work, their size does. The shard
sets are an entry of the artifact store under ``outputs/bench/cache`` (built once, under its
lock; the JPEG tree is dropped once sharded).

The loader is ``ShardDataModule``'s training loader with the ImageNet recipe's data config
(``conf/data/imagefolder.yaml``: resize + centre crop, hflip moving the masks, normalise,
shuffle buffer): ``num_workers=0`` with one torch thread (one process, one core) and
``num_workers=1`` (one worker process; what ``data.num_workers`` multiplies). Shards are read
from the page cache: disk or network reads are not in the figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bench.benchlib import ALPHA, _quiet_lightning

REPO = Path(__file__).resolve().parent.parent
PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "motorcycle_left", "motorcycle_right",
)  # fmt: skip
SHAPES = ((500, 375), (500, 375), (500, 333), (375, 500))  # (width, height), cycled
QUALITY = 90
VIEWS = (224, 384)  # img_size; patch 16: N = 196, 576
TEACHER_NET = {
    "model_name": "vit_tiny_patch16_224",
    "patch_size": 16,
    "embed_dim": 48,
    "depth": 2,
    "num_heads": 2,
}
DATA_YAML = REPO / "src" / "winft_lightning" / "conf" / "data" / "imagefolder.yaml"
CACHE = Path("outputs") / "bench" / "cache"
# recipe -> what its H100 step rate is, where it was recorded, and what its loader reads
RECIPES = {
    "vit_b16_224": {
        "img_size": 224,
        "masks": False,
        "file": "bench/results/bench_gpu_h100_2026-11-25.json",
        "key": ["overhead", "lightning_images_per_s"],
        "step": "ViTModule vit_base_patch16_224, batch 64, in a real Trainer (overhead section)",
    },
    "winft_b16_384": {
        "img_size": 384,
        "masks": True,
        "file": "bench/results/headline_gpu_h100_2026-11-25.json",
        "key": ["gpu", "fits", 0, "images_per_s_step_only"],
        "step": "the headline experiment=winft_b16_384, batch 64, bf16, trainer=gpu, step only",
    },
}


@dataclass(frozen=True)
class Plan:
    """How much to build and time: ``per_photo`` training crops of each photo (one test crop
    each, ``len(photos)`` val images carved from train), loader ``batch``, ``warmup`` and
    ``batches`` timed per measurement, ``rounds`` of every configuration in turn."""

    per_photo: int = 32
    batch: int = 32
    warmup: int = 2
    batches: int = 8
    rounds: int = 3
    photos: tuple[str, ...] = PHOTOS

    def build_key(self) -> dict:
        """What the shard sets depend on (their store key)."""
        return {"per_photo": self.per_photo, "photos": list(self.photos)}


FULL = Plan()
QUICK = Plan(per_photo=4, batch=16, warmup=1, batches=3, rounds=1)  # --quick: a smoke


def photos(names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """scikit-image's colour photos by name, ``[H, W, 3]`` uint8 (the stereo pair's two views
    as ``motorcycle_left`` / ``motorcycle_right``)."""
    from skimage import data

    out = {}
    for name in names:
        if name.startswith("motorcycle_"):
            left, right, _ = data.stereo_motorcycle()
            out[name] = left if name.endswith("left") else right
        else:
            out[name] = getattr(data, name)()
    return out


def crop_jpeg(photo: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> bytes:
    """A random crop (half to all of the largest box of ``shape``'s aspect) of ``photo``,
    resized to ``shape`` (width, height), maybe mirrored, as JPEG bytes at ``QUALITY``."""
    import io

    from PIL import Image

    h, w = photo.shape[:2]
    aspect = shape[0] / shape[1]
    box_w, box_h = (w, round(w / aspect)) if w / h < aspect else (round(h * aspect), h)
    scale = math.sqrt(rng.uniform(0.5, 1.0))
    cw, ch = max(1, round(box_w * scale)), max(1, round(box_h * scale))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = Image.fromarray(photo[y : y + ch, x : x + cw]).resize(shape, Image.LANCZOS)
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=QUALITY)
    return buf.getvalue()


def write_tree(root: Path, plan: Plan, seed: int = 0) -> dict:
    """``root/{train,test}/<photo>/NNNN.jpg``: ``plan.per_photo`` training crops and one test
    crop of each photo. Returns the image count and their mean JPEG bytes and pixels."""
    rng = np.random.default_rng(seed)
    sizes, pixels = [], []
    for name, photo in photos(plan.photos).items():
        for split, count in (("train", plan.per_photo), ("test", 1)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                shape = SHAPES[len(sizes) % len(SHAPES)]
                raw = crop_jpeg(photo, shape, rng)
                (folder / f"{i:04d}.jpg").write_bytes(raw)
                sizes.append(len(raw))
                pixels.append(shape[0] * shape[1])
    return {
        "images": len(sizes),
        "jpeg_bytes_mean": statistics.fmean(sizes),
        "pixels_mean": statistics.fmean(pixels),
        "shapes": [list(s) for s in SHAPES],
        "quality": QUALITY,
    }


def _teacher(path: Path, img_size: int, classes: int) -> Path:
    """A randomly initialised tiny ViT at ``img_size`` (patch 16), saved as a checkpoint."""
    from winft_lightning.models.teacher import save_untrained

    torch.manual_seed(0)
    net = {**TEACHER_NET, "img_size": img_size, "num_classes": classes}
    return save_untrained({"_target_": "winft_lightning.lit.modules.ViTModule", "net": net}, path)


def build_sets(out: Path, plan: Plan) -> dict:
    """Under ``out``: ``shards/`` (``prepare_shards`` of the photo tree) and ``masks_<size>/``
    (``analyze_shards`` at each of ``VIEWS``). Returns the build's facts and timings."""
    from winft_lightning.stages.analyze import analyze_shards
    from winft_lightning.stages.prepare import prepare_shards

    cfg = _data_cfg()
    start = time.perf_counter()
    tree = write_tree(out / "tree", plan)
    source = {
        "name": "imagefolder",
        "path": str(out / "tree"),
        "splits": {"train": "train", "val": None, "test": "test"},
        "val_count": len(plan.photos),
        "maxcount": 64,
    }
    info = {"tree": tree, "tree_s": time.perf_counter() - start}
    start = time.perf_counter()
    prepare_shards(source, out / "shards", progress=False)
    info["prepare_s"] = time.perf_counter() - start
    for size in VIEWS:
        start = time.perf_counter()
        analyze_shards(
            teacher=_teacher(out / f"teacher_{size}.ckpt", size, len(plan.photos)),
            shards=out / "shards",
            out_dir=out / f"masks_{size}",
            alphas=[ALPHA],
            mean=list(cfg["mean"]),
            std=list(cfg["std"]),
            device="cpu",
            progress=False,
        )
        info[f"analyze_{size}_s"] = time.perf_counter() - start
    for f in sorted((out / "tree").rglob("*"), reverse=True):  # sharded: the tree is not read
        f.unlink() if f.is_file() else f.rmdir()
    (out / "tree").rmdir()
    return info


def photo_sets(cache: Path, plan: Plan) -> tuple[Path, dict]:
    """The shard and mask sets of ``plan``: an artifact store entry under ``cache``, built
    once (under the store's lock) and reused by later runs. Returns (entry, its record)."""
    from winft_lightning.data.masks import MASK_FORMAT
    from winft_lightning.data.shards import FORMAT_VERSION
    from winft_lightning.runtime.hashing import json_digest
    from winft_lightning.runtime.store import ArtifactStore

    spec = [FORMAT_VERSION, MASK_FORMAT, plan.build_key(), SHAPES, QUALITY, VIEWS, TEACHER_NET]
    store = ArtifactStore(cache)
    with _quiet_lightning():
        path = store.ensure(
            "loader_photos", json_digest(spec, length=12), lambda d: build_sets(d, plan),
            what="loader bench photos",
        )  # fmt: skip
    return path, store.record("loader_photos", path.name)


def _data_cfg() -> dict:
    """The ImageNet recipe's loader options (``conf/data/imagefolder.yaml``)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(DATA_YAML)
    keys = ("mean", "std", "hflip", "random_resized_crop", "shuffle_buffer", "seed")
    return {k: OmegaConf.to_container(cfg, resolve=False)[k] for k in keys}


def _children_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process's live children: the loader's
    worker processes (Linux ``/proc``)."""
    me, tick, total = os.getpid(), os.sysconf("SC_CLK_TCK"), 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # gone meanwhile
            continue
        if int(fields[1]) == me:  # fields[0] is the state; ppid, ..., utime [11], stime [12]
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def timed_rate(loader, batches: int, warmup: int) -> dict:
    """Over ``batches`` batches after ``warmup``: images per wall second, and images per CPU
    second of this process and of its worker processes; seconds to the first batch."""
    if warmup < 1 or batches < 1:
        raise ValueError(f"timed_rate needs warmup >= 1 and batches >= 1, got {warmup}, {batches}")

    def now() -> tuple[float, float, float]:
        return time.perf_counter(), time.process_time(), _children_cpu_s()

    start = time.perf_counter()
    images, first, marks = 0, 0.0, []
    for i, b in enumerate(loader.with_epoch(warmup + batches)):
        if i == 0:
            first = time.perf_counter() - start
        if i >= warmup:
            images += b["image"].shape[0]
        if i in (warmup - 1, warmup + batches - 1):  # the workers are alive at both
            marks.append(now())
    wall, main, workers = (end - begin for end, begin in zip(marks[1], marks[0], strict=True))
    return {
        "images_per_s": images / wall,
        "main_cpu_s_per_image": main / images,
        "worker_cpu_s_per_image": workers / images,
        "first_batch_s": first,
    }


def rate(root: Path, size: int, masks: bool, workers: int, plan: Plan) -> dict:
    """:func:`timed_rate` of the training loader over ``root`` at ``size`` with ``workers``
    loader workers, and its images per core-second: ``workers=0`` runs with one torch thread
    and its core is this process's; with workers, the workers' cores (per worker)."""
    from winft_lightning.data.datamodule import ShardDataModule

    dm = ShardDataModule(
        root=root, batch_size=plan.batch, num_workers=workers, img_size=size,
        alpha=ALPHA if masks else None, use_masks=masks, **_data_cfg(),
    )  # fmt: skip
    dm.setup("fit")
    threads = torch.get_num_threads()
    if workers == 0:
        torch.set_num_threads(1)
    try:
        out = timed_rate(dm.train_dataloader(), plan.batches, plan.warmup)
    finally:
        torch.set_num_threads(threads)
    cpu = out["worker_cpu_s_per_image"] if workers else out["main_cpu_s_per_image"]
    return out | {"images_per_core_s": 1.0 / cpu if cpu > 0 else None}  # None: under a tick


def configs() -> list[tuple[int, bool, int]]:
    """(img_size, masks, workers) of every measurement."""
    return [(s, m, w) for s in VIEWS for m in (False, True) for w in (0, 1)]


def measure(entry: Path, plan: Plan) -> dict:
    """Every configuration, ``plan.rounds`` times in turn (so that a busy moment of the
    machine falls on all of them). Returns name -> the median of each figure over the
    rounds, and the rounds."""
    runs: dict[str, dict] = {}
    for _ in range(plan.rounds):
        for size, masks, workers in configs():
            root = entry / (f"masks_{size}" if masks else "shards")
            name = f"{size}_{'masks' if masks else 'no_masks'}_w{workers}"
            runs.setdefault(name, {"rounds": []})["rounds"].append(
                rate(root, size, masks, workers, plan)
            )
    for run in runs.values():
        for k in run["rounds"][0]:
            values = [r[k] for r in run["rounds"] if r[k] is not None]
            run[k] = statistics.median(values) if values else None
    return runs


def _recorded(recipe: dict) -> float:
    """The step images/s ``recipe`` names, read from its results file."""
    value = json.loads((REPO / recipe["file"]).read_text())
    for k in recipe["key"]:
        value = value[k]
    return float(value)


def _cores(step: float, per_core: float | None) -> int | None:
    return math.ceil(step / per_core) if per_core else None


def cores(runs: dict) -> dict:
    """Per recipe: its H100 step images/s (from the committed results) and the loader cores
    that keep it fed, ``ceil(step / images per core-second)`` of one worker (``cores``) and of
    one process without workers; also from wall-clock images/s (which a shared machine
    lowers)."""
    out = {}
    for name, recipe in RECIPES.items():
        step = _recorded(recipe)
        tag = f"{recipe['img_size']}_{'masks' if recipe['masks'] else 'no_masks'}"
        worker, process = runs[f"{tag}_w1"], runs[f"{tag}_w0"]
        out[name] = {
            "step_images_per_s": step,
            "step_source": f"{recipe['file']}: {'.'.join(map(str, recipe['key']))}",
            "step_is": recipe["step"],
            "loader": tag,
            "per_worker_images_per_core_s": worker["images_per_core_s"],
            "per_process_images_per_core_s": process["images_per_core_s"],
            "cores": _cores(step, worker["images_per_core_s"]),
            "cores_one_process_each": _cores(step, process["images_per_core_s"]),
            "cores_from_wall_clock": _cores(step, worker["images_per_s"]),
        }
    return out


def loader_section(device: torch.device, opts: argparse.Namespace) -> dict:
    """Training loader images/s on one core (224 / 384, with and without masks) and the
    loader cores one H100 needs per recipe (``--quick``: a smaller set, one round)."""
    return run(CACHE, QUICK if opts.quick else FULL, device)


def run(cache: Path, plan: Plan, device: torch.device) -> dict:
    """The section over the photo sets of ``plan`` in the store at ``cache``."""
    entry, record = photo_sets(cache, plan)
    runs = measure(entry, plan)
    need = cores(runs)
    for name, c in need.items():
        print(
            f"loader: {name}: {c['step_images_per_s']:.0f} img/s on the H100 / "
            f"{c['per_worker_images_per_core_s']:.0f} img/s a worker ({c['loader']}) = "
            f"{c['cores']} loader cores",
            flush=True,
        )
    return {
        "source": "scikit-image colour photos -> random crops as JPEG (ImageFolder tree) -> "
        "prepare_shards -> analyze_shards (a random tiny ViT, patch 16, at 224 and 384)",
        "plan": asdict(plan),
        "build": {**record["info"], "built": record["created"], "entry": str(entry)},
        "data_config": {"file": str(DATA_YAML.relative_to(REPO)), **_data_cfg()},
        "masks": f"AWD windows (alpha {ALPHA}) + DIP order, i16z, hflip moving them",
        "device_note": f"loader timed on the CPU ({device} is not used by it)",
        "workers_note": "w0: num_workers=0, one torch thread, the whole loader in this process; "
        "w1: num_workers=1, one worker process (this process only receives the batches)",
        "runs": runs,
        "cores_per_h100": need,
        "per_core_is": "images per CPU second of the loader's process (w0) or worker (w1), "
        "so that other jobs on the machine do not lower it (images_per_s is wall-clock)",
        "cores_is": "ceil(H100 step images/s / a worker's images per core-second on this "
        "host); the training process needs its own core(s) besides",
    }
