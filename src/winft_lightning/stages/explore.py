"""``python -m winft_lightning.explore ckpt=PATH | run=RUN_DIR [winft=PATH] [images=[...]]``.

Writes the interactive explorer (:mod:`winft_lightning.explorer`), one offline HTML file, for
a teacher ViT: from a teacher file (anything ``load_teacher`` reads) or a training run's
directory (:func:`run_source`: its teacher, its WinfT checkpoint, its test split) and images
(files, folders, the run's test split, or scikit-image's photos). Bad input is refused with
an :class:`ExploreError` naming the option and the file.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from winft_lightning.stages.visualize import load_image, load_model, sample_images, square_view

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ExploreError(ValueError):
    """Input the explorer cannot use; the message names the option and the file."""


# ---------------------------------------------------------------- images


def image_files(entries: Sequence[str | Path]) -> list[Path]:
    """``images=``: files as given, folders expanded to their image files (sorted)."""
    files: list[Path] = []
    for entry in map(Path, entries):
        if entry.is_dir():
            found = sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ExploreError(
                    f"images: folder {entry} holds no {'/'.join(IMAGE_SUFFIXES)} file"
                )
            files += found
        elif entry.is_file():
            files.append(entry)
        else:
            raise ExploreError(f"images: {entry} does not exist")
    return files


def read_image(path: Path, size: int) -> Tensor:
    """One image file as the analyzed view ``[3, size, size]`` in [0, 1]."""
    try:
        return load_image(path, size)
    except Exception as err:  # PIL raises several types on a file it cannot decode
        raise ExploreError(
            f"images: {path} cannot be read as an image ({type(err).__name__}: {err})"
        ) from err


def split_images(
    shards: Path, count: int, size: int, split: str = "test"
) -> tuple[Tensor, list[str]]:
    """The first ``count`` images of a shard set's ``split`` as analyzed views ``[B, 3, size,
    size]`` in [0, 1], with their sample keys."""
    from winft_lightning.data.shards import IMAGE_EXTS, iter_tar, read_manifest

    try:
        names = read_manifest(shards)["splits"][split]["shards"]
    except (OSError, ValueError, KeyError) as err:
        raise ExploreError(
            f"run's shard set {shards} has no readable {split} split: {err}"
        ) from err
    images: list[Tensor] = []
    keys: list[str] = []
    for name in names:
        for key, members in iter_tar(shards / name):
            ext = next((e for e in IMAGE_EXTS if e in members), None)
            if ext is None:
                continue
            with Image.open(io.BytesIO(members[ext])) as im:
                images.append(square_view(np.asarray(im.convert("RGB")), size))
            keys.append(key)
            if len(images) == count:
                return torch.stack(images), keys
    if not images:
        raise ExploreError(f"run's shard set {shards}: its {split} split holds no image")
    return torch.stack(images), keys


# ---------------------------------------------------------------- a run's directory


@dataclass(frozen=True)
class RunSource:
    """What a training run's directory gives the explorer."""

    run_dir: Path
    teacher: Path
    winft: Path | None
    shards: Path | None
    alpha: float | None
    beta: float | None


def newest_run(path: Path) -> Path:
    """``path`` if it is a run dir (it holds ``results.json``), else the newest finished run in
    it: a task folder such as ``outputs/runs/debug_tiny`` holds one dir per start, named by its
    time stamp, so the last name in sorted order is the newest."""
    if not path.is_dir():
        raise ExploreError(f"run={path} is not a directory")
    if (path / "results.json").is_file():
        return path
    runs = sorted(p.parent for p in path.glob("*/results.json"))
    return runs[-1] if runs else path


def _results_row(run_dir: Path) -> dict[str, Any]:
    results = run_dir / "results.json"
    if not results.is_file():
        raise ExploreError(f"run={run_dir} has no results.json: not a finished training run's dir")
    try:
        row = json.loads(results.read_text())
    except json.JSONDecodeError as err:
        raise ExploreError(f"run={run_dir}: {results} is not JSON ({err})") from err
    if not isinstance(row, dict):
        raise ExploreError(f"run={run_dir}: {results} holds no results row")
    return row


def _run_config(run_dir: Path, key: str) -> Any:
    """``key`` of the run's own config (``.hydra/config.yaml``, or a teacher run's ``job.yaml``)."""
    from omegaconf import OmegaConf

    for name in (".hydra/config.yaml", "job.yaml", "run/job.yaml"):
        if (run_dir / name).is_file():
            cfg = OmegaConf.load(run_dir / name)
            return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    return None


def _own_checkpoint(run_dir: Path, row: Mapping[str, Any]) -> Path | None:
    """The run's own best checkpoint (as recorded, or by name under the run dir if it moved),
    else its last.ckpt, else a store teacher's teacher.ckpt."""
    best = Path(row["best_ckpt"]) if row.get("best_ckpt") else None
    found = [best, run_dir / "checkpoints" / best.name] if best else []
    found += [run_dir / "checkpoints" / "last.ckpt", run_dir / "teacher.ckpt"]
    return next((p for p in found if p.is_file()), None)


def run_source(run_dir: str | Path) -> RunSource:
    """A training run's teacher (``results.json``'s ``teacher_ckpt``, else the config's
    ``teacher.ckpt``, else for a ``ViTModule`` run the run's own checkpoint), its WinfT
    checkpoint (a ``WinfTModule`` run's own), its shard set (``mask_root``, else ``data.root``)
    and its alpha and beta. ``run_dir`` may also be a task folder of runs: its newest run
    (:func:`newest_run`)."""
    run_dir = newest_run(Path(run_dir))
    row = _results_row(run_dir)
    module = str(row.get("module") or "")
    named = row.get("teacher_ckpt") or _run_config(run_dir, "teacher.ckpt")
    if named and not Path(named).is_file():
        raise ExploreError(f"run={run_dir}: its teacher {named} no longer exists; pass ckpt=FILE")
    teacher = Path(named) if named else None
    if teacher is None and module == "ViTModule":
        teacher = _own_checkpoint(run_dir, row)  # a full-attention ViT run is its own teacher
    if teacher is None:
        raise ExploreError(
            f"run={run_dir} has no teacher: its results.json names no teacher_ckpt and it is "
            f"a {module or 'module-less'} run without a ViTModule checkpoint; pass ckpt=FILE"
        )
    shards = row.get("mask_root") or _run_config(run_dir, "data.root")
    return RunSource(
        run_dir=run_dir,
        teacher=teacher,
        winft=_own_checkpoint(run_dir, row) if module == "WinfTModule" else None,
        shards=Path(shards) if shards else None,
        alpha=row.get("alpha"),
        beta=row.get("beta"),
    )


# ---------------------------------------------------------------- the job


def input_images(
    cfg: Mapping[str, Any], source: RunSource | None, size: int
) -> tuple[Tensor, list[str]]:
    """``[B, 3, size, size]`` in [0, 1] and a name per image: ``images=``, else the run's test
    split (``num_images``), else scikit-image's photos."""
    if cfg.get("images"):
        files = image_files(list(cfg["images"]))
        return torch.stack([read_image(f, size) for f in files]), [f.name for f in files]
    if source is not None:
        if source.shards is None:
            raise ExploreError(
                f"run={source.run_dir}: no shard set found (results.json has no mask_root, its "
                "config no data.root); pass images=[...]"
            )
        return split_images(source.shards, int(cfg.get("num_images") or 3), size)
    return sample_images(size), ["astronaut", "coffee", "chelsea"]


def _start(value: Any, given: Any, stops: Sequence[float]) -> float | None:
    if given is not None:
        return float(given)
    return float(value) if value is not None and float(value) in stops else None


def run(cfg: Mapping[str, Any]) -> Path:
    """The CLI's job on a plain config mapping; returns the HTML file written."""
    from winft_lightning.core.interactions import check_alpha, check_beta
    from winft_lightning.explorer import DEFAULT_BETAS, explore, write_explorer
    from winft_lightning.models.teacher import teacher_norm
    from winft_lightning.models.vit import check_vit_family
    from winft_lightning.stages.visualize import winft_window_sum

    if Path(cfg["out_file"]).suffix.lower() not in (".html", ".htm"):
        raise ExploreError(f"out_file={cfg['out_file']} must be an .html file")
    alphas = [check_alpha(a, "alphas", ExploreError) for a in cfg["alphas"]]
    betas = [check_beta(b, "betas", ExploreError) for b in (cfg.get("betas") or DEFAULT_BETAS)]
    source = run_source(cfg["run"]) if cfg.get("run") else None
    teacher = cfg.get("ckpt") or (source.teacher if source else None)
    if not teacher:
        raise ExploreError("no teacher: give ckpt=TEACHER_FILE or run=RUN_DIR")
    load = dict(cfg.get("load") or {})
    if load.get("model_name"):
        check_vit_family(str(load["model_name"]), "load.model_name", ExploreError)
    option = "ckpt" if cfg.get("ckpt") else f"run={source.run_dir}: teacher"
    model, img_size, _, grid, info = load_model(teacher, path_option=option, **load)
    shown, names = input_images(cfg, source, img_size)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in teacher_norm(model, info))
    x = (shown - mean) / std
    winft = cfg.get("winft") or (source.winft if source else None)
    winft_w = winft_window_sum(winft, x) if winft else None
    n = grid[0] * grid[1]
    if winft_w is not None and tuple(winft_w.shape[1:]) != (n, n):
        raise ExploreError(
            f"winft={winft} predicts W for {winft_w.shape[-1]} patches, the teacher has {n}"
        )
    packed = explore(
        model.to(torch.device(cfg.get("device") or "cpu")), x, shown, alphas=alphas, betas=betas,
        heads=bool(cfg.get("heads")), winft_w=winft_w, names=names,
        batch_size=int(cfg.get("batch_size") or 4), grid=grid,
        title=f"patch interactions: {Path(teacher).name}",
        source={"teacher": str(teacher), **({"winft": str(winft)} if winft else {}),
                **({"run": str(source.run_dir)} if source else {})},
        start_alpha=_start(source and source.alpha, cfg.get("start_alpha"), alphas),
        start_beta=_start(source and source.beta, cfg.get("start_beta"), betas),
    )  # fmt: skip
    path = write_explorer(cfg["out_file"], packed)
    log.info("explorer of %d images: %s (%.2f MB)", len(names), path, path.stat().st_size / 1e6)
    return path


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    @hydra.main(version_base="1.3", config_path="../conf", config_name="explore")
    def cli(cfg: DictConfig) -> None:
        path = run(OmegaConf.to_container(cfg, resolve=True))
        print(f"explorer: {path} ({path.stat().st_size / 1e6:.2f} MB); open it in a browser")

    cli()


if __name__ == "__main__":
    main()
