"""The analysis as a library call on one's own timm ViT (``from winft_lightning import analyze``),
whose result also writes the interactive explorer (``res.explorer(path)``, and inline in Jupyter)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from winft_lightning.core.analysis import DEFAULT_ALPHAS, Analysis
from winft_lightning.core.analysis import analyze as analyze_batch
from winft_lightning.core.interactions import Grid

__all__ = ["Analysis", "ModelAnalysis", "analyse", "analyze"]


@dataclass
class ModelAnalysis(Analysis):
    """:class:`~winft_lightning.core.analysis.Analysis` of ``model`` on the batch ``inputs``,
    which also draws itself as the interactive explorer (:mod:`winft_lightning.explorer`)."""

    model: nn.Module | None = field(default=None, repr=False, compare=False)
    inputs: Tensor | None = field(default=None, repr=False, compare=False)

    def explorer_data(
        self,
        images: Tensor | None = None,
        *,
        heads: bool = False,
        winft_w: Tensor | None = None,
        names: Sequence[str] | None = None,
        **page: object,
    ) -> dict:
        """The explorer's packed data: ``model`` analysed again on ``inputs`` with everything the
        page shows (every patch's attention rows, the rollout, the attention distances; per
        head with ``heads``) at this analysis's alphas. images: the batch in [0, 1] to draw
        under the maps (default: each input min-max scaled); winft_w ``[B, N, N]``: WinfT's
        predicted sum of W; page: ``betas``, ``title``, ``start_alpha``, ``start_beta``."""
        from winft_lightning.explorer import explore

        if self.model is None or self.inputs is None:
            raise ValueError(
                "this analysis holds no model: the explorer needs winft_lightning.analyze(model, images)'s result"
            )
        return explore(
            self.model, self.inputs, images, alphas=tuple(self.windows), heads=heads,
            winft_w=winft_w, names=names, grid=self.grid, **page,
        )  # fmt: skip

    def explorer(self, path: str | Path, images: Tensor | None = None, **options: object) -> Path:
        """Write the explorer, one offline HTML file, to ``path``; returns it. ``images`` and
        ``options`` as for :meth:`explorer_data`."""
        from winft_lightning.explorer import write_explorer

        return write_explorer(path, self.explorer_data(images, **options))

    def _repr_html_(self) -> str:
        """Jupyter's inline display: the explorer in an iframe."""
        from winft_lightning.explorer import explorer_html, iframe_html

        return iframe_html(explorer_html(self.explorer_data()))


def analyze(
    model: nn.Module,
    images: Tensor,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    grid: Grid | None = None,
    **options: bool | Sequence[int],
) -> ModelAnalysis:
    """U ``[B, N, N]``, the AWD windows at every ``alpha`` (default: the ones the pipeline's
    masks are made at), the DIP order, and through them the responsive fields
    (``.fields(beta)``) of ``images [B, 3, H, W]`` (normalised as ``model`` takes them) in
    a timm VisionTransformer ``model``, e.g. one made by ``timm.create_model``.

    The model runs in eval mode (its mode is restored after) without gradients, on its own
    device; ``grid`` defaults to its ``patch_embed.grid_size``. ``options``: ``patches``,
    ``rollout``, ``distances``, ``heads`` of :func:`winft_lightning.core.analysis.analyze`.
    The result also writes the interactive explorer: ``res.explorer("explorer.html")``."""
    training = model.training
    param = next(model.parameters(), None)
    if param is not None:
        images = images.to(param.device)
    model.eval()
    try:
        res = analyze_batch(model, images, tuple(alphas), grid, **options)
    finally:
        model.train(training)
    return ModelAnalysis(**vars(res), model=model, inputs=images)


analyse = analyze
"""``winft_lightning.analyse``: the British spelling users already type, an alias of
:func:`analyze` (the code's one spelling)."""
