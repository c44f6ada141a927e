"""``python -m winft_lightning.visualize ckpt=PATH [winft=PATH] images=[a.png,...] out_dir=DIR``.

Loads a teacher ViT (and, with ``winft=``, a WinfT checkpoint whose predicted W goes beside
the ground-truth responsive fields of Fig. 10), runs the attention capture once per image batch, and writes the paper's
figures (:mod:`winft_lightning.figures`) as PNGs. With ``images=[]`` a few of scikit-image's
bundled photos are used; ``results=[...]`` (results.json files or run directories) adds the
accuracy vs E_O trade-off plot.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from winft_lightning import figures
from winft_lightning.core.analysis import analyze, default_patches
from winft_lightning.core.interactions import Grid
from winft_lightning.data.loading import analyzed_view

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- analysis -> figures


def analysis_figures(
    model: nn.Module,
    images: Tensor,
    grid: Grid,
    alphas: Sequence[float],
    betas: Sequence[float],
    out_dir: str | Path,
    patches: Sequence[int] | None = None,
    winft_w: Tensor | Sequence[Any] | None = None,
    display: Tensor | None = None,
    field_alpha: float | None = None,
    field_beta: float | None = None,
    prefix: str = "img",
) -> list[Path]:
    """Analyze once (:func:`analysis.analyze`: U / windows / DIP / rollout / fields) and
    write every figure.

    images: ``[B, 3, H, W]`` as the model takes them; display: the same images in [0, 1]
    for drawing (default: per-image min-max of ``images``). winft_w: WinfT's ``sum_l W_l``
    per image, ``[B, N, N]`` (or a length-B list of anything
    :func:`figures.responsive_field_figure` takes). The responsive field uses ``field_alpha``
    (default ``alphas[0]``) and ``field_beta`` (default the largest beta). Returns the paths
    written, per image ``{prefix}{i}_{attention,uncertainty_rows,windows,dip,field,
    responsive_field}.png`` plus ``rollout.png``."""
    out = Path(out_dir)
    patches = list(patches) if patches is not None else default_patches(grid)
    model.eval()
    res = analyze(model, images, alphas, grid, patches=patches, rollout=True).cpu()
    shown = (display if display is not None else figures.display_images(images)).detach().cpu()
    fa = alphas[0] if field_alpha is None else field_alpha
    fb = max(betas, default=0.0) if field_beta is None else field_beta
    field = res.field(fa, fb)
    variance = res.column_variance()

    paths: list[Path] = []
    for i in range(images.shape[0]):
        img = shown[i]
        figs = {
            "attention": figures.attention_maps_figure(img, res.rows[i], patches, grid),
            "uncertainty_rows": figures.uncertainty_rows_figure(img, res.u[i], patches, grid),
            "windows": figures.window_figure(
                img, {a: w[i] for a, w in res.windows.items()}, patches, grid
            ),
            "dip": figures.dip_figure(img, res.u[i], grid, betas, res.order[i], variance[i]),
            "field": figures.field_figure(img, field[i], grid),
            "responsive_field": figures.responsive_field_figure(
                img,
                field[i],
                patches,
                grid,
                winft_w=None if winft_w is None else winft_w[i],
                num_blocks=res.rows.shape[1] if winft_w is not None else None,
            ),
        }
        paths += [figures.save(fig, out / f"{prefix}{i}_{name}.png") for name, fig in figs.items()]
    roll = figures.rollout_figure(shown, res.rollout, None, grid, variance=variance)
    paths.append(figures.save(roll, out / "rollout.png"))
    return paths


# ---------------------------------------------------------------- inputs


def load_image(path: str | Path, size: int) -> Tensor:
    """PNG/JPEG -> ``[3, size, size]`` in [0, 1]: the analyzed view the masks are made on
    (:func:`data.loading.analyzed_view`: shorter side resized to ``size``, centre crop)."""
    with Image.open(path) as im:
        return square_view(np.asarray(im.convert("RGB")), size)


def square_view(rgb: np.ndarray, size: int) -> Tensor:
    """An ``[H, W, 3]`` uint8 photo -> its analyzed view ``[3, size, size]`` in [0, 1]."""
    img = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)  # [3, H, W] uint8
    return analyzed_view(img, size).to(torch.float32).div_(255.0)


def sample_images(size: int) -> Tensor:
    """scikit-image's astronaut, coffee and chelsea photos as ``[3, 3, size, size]``."""
    from skimage import data

    return torch.stack(
        [square_view(f(), size) for f in (data.astronaut, data.coffee, data.chelsea)]
    )


def read_results(sources: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Result rows from ``results.json`` files (a row or a list of rows) or directories
    (searched recursively for ``results.json``)."""
    rows: list[dict[str, Any]] = []
    for src in map(Path, sources):
        files = sorted(src.rglob("results.json")) if src.is_dir() else [src]
        for f in files:
            data = json.loads(f.read_text())
            rows += data if isinstance(data, list) else [data]
    return rows


def winft_window_sum(path: str | Path, images: Tensor) -> Tensor:
    """WinfT's predicted ``sum_l W_l`` (Fig. 10) for ``images`` ``[B, 3, H, W]`` from a
    ``WinfTModule`` checkpoint: ``[B, N, N]`` float, entries in 0..l."""
    from winft_lightning.lit.modules import WinfTModule
    from winft_lightning.models import predicted_window_sum

    module = WinfTModule.load_from_checkpoint(path, map_location="cpu").eval()
    return predicted_window_sum(module.net, images.to(module.device))


def load_model(path: str | Path, **kw: Any) -> tuple[nn.Module, int, int, Grid, Any]:
    """``winft_lightning.models.teacher.load_teacher(path, **kw)`` -> (model, img_size, patch_size,
    grid, info); kw (model_name, img_size, ...) is for plain timm weights files."""
    from winft_lightning.models.teacher import load_teacher

    model, info = load_teacher(path, **kw)
    img = int(np.atleast_1d(info.img_size)[0])
    patch = int(np.atleast_1d(info.patch_size)[0])
    return model.eval(), img, patch, tuple(info.grid), info


def run(cfg: Mapping[str, Any]) -> list[Path]:
    """The CLI's job on a plain config mapping; returns the files written."""
    from winft_lightning.models.teacher import teacher_norm

    load = {"path_option": "ckpt", **dict(cfg.get("load") or {})}
    model, img_size, _, grid, info = load_model(cfg["ckpt"], **load)
    device = torch.device(cfg.get("device") or "cpu")
    model.to(device)
    paths = list(cfg.get("images") or [])
    shown = (
        torch.stack([load_image(p, img_size) for p in paths]) if paths else sample_images(img_size)
    )
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in teacher_norm(model, info))
    x = ((shown - mean) / std).to(device)
    out = Path(cfg["out_dir"])
    bs = int(cfg.get("batch_size") or 4)
    winft_w = winft_window_sum(cfg["winft"], x.cpu()) if cfg.get("winft") else None
    written: list[Path] = []
    for start in range(0, x.shape[0], bs):
        written += analysis_figures(
            model,
            x[start : start + bs],
            grid,
            list(cfg["alphas"]),
            list(cfg["betas"]),
            out / f"batch{start // bs}" if x.shape[0] > bs else out,
            patches=cfg.get("patches"),
            winft_w=None if winft_w is None else winft_w[start : start + bs],
            display=shown[start : start + bs],
            field_alpha=cfg.get("field_alpha"),
            field_beta=cfg.get("field_beta"),
        )
    drawn = {  # what the figures were drawn with (Fig. 7/10's field, the WinfT run)
        "ckpt": str(cfg["ckpt"]), "winft": cfg.get("winft"), "images": paths,
        "alphas": list(cfg["alphas"]), "betas": list(cfg["betas"]),
        "field_alpha": cfg.get("field_alpha") or cfg["alphas"][0],
        "field_beta": cfg.get("field_beta") if cfg.get("field_beta") is not None
        else max(list(cfg["betas"]), default=0.0),
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures.json").write_text(json.dumps(drawn, indent=2))
    if cfg.get("results"):
        rows = read_results(list(cfg["results"]))
        for key in ("eo", "eo_ratio"):
            fig = figures.tradeoff_figure(rows, x=key, log_x=bool(cfg.get("log_x", False)))
            written.append(figures.save(fig, out / f"tradeoff_{key}.png"))
    log.info("wrote %d figures to %s", len(written), out)
    return written


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    @hydra.main(version_base="1.3", config_path="../conf", config_name="visualize")
    def cli(cfg: DictConfig) -> None:
        files = run(OmegaConf.to_container(cfg, resolve=True))
        print(f"{len(files)} figures in {cfg.out_dir}")

    cli()


if __name__ == "__main__":
    main()
