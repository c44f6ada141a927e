"""The analysis as a library call on one's own timm ViT (``from winft_lightning import analyze``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from winft_lightning.core.analysis import DEFAULT_ALPHAS, Analysis
from winft_lightning.core.analysis import analyze as analyze_batch
from winft_lightning.core.interactions import Grid

__all__ = ["Analysis", "analyse", "analyze"]


def analyze(
    model: nn.Module,
    images: Tensor,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    grid: Grid | None = None,
    **options: bool | Sequence[int],
) -> Analysis:
    """U ``[B, N, N]``, the AWD windows at every ``alpha`` (default: the ones the pipeline's
    masks are made at), the DIP order, and through them the responsive fields
    (``.fields(beta)``) of ``images [B, 3, H, W]`` (normalised as ``model`` takes them) in
    a timm VisionTransformer ``model``, e.g. one made by ``timm.create_model``.

    The model runs in eval mode (its mode is restored after) without gradients, on its own
    device; ``grid`` defaults to its ``patch_embed.grid_size``. ``options``: ``patches``,
    ``rollout``, ``distances`` of :func:`winft_lightning.core.analysis.analyze`."""
    training = model.training
    param = next(model.parameters(), None)
    if param is not None:
        images = images.to(param.device)
    model.eval()
    try:
        return analyze_batch(model, images, tuple(alphas), grid, **options)
    finally:
        model.train(training)


analyse = analyze
"""``winft_lightning.analyse``: the British spelling users already type, an alias of
:func:`analyze` (the code's one spelling)."""
