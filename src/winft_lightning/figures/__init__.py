"""The paper's figures (Fig. 3-7, 10), attention rollout, the accuracy/E_O trade-off and the
claims figures (verdicts, paired differences, perturbation curves).

Pure plotting: the numbers come from :mod:`winft_lightning.core.analysis` (U, windows, DIP order,
rollout, fields); every function takes tensors or arrays for ONE image (unless stated) and
returns a :class:`matplotlib.figure.Figure` (no pyplot state, Agg-safe); :func:`save` writes
it atomically. Shapes: image ``[3, H, W]`` in [0, 1] (tensor or array) or uint8 ``[H, W, 3]``;
grid ``(h, w)``; N = h * w patches, row-major (x_p = p % w, y_p = p // w); U ``[N, N]``;
windows ``[N, 4]`` inclusive ``(x_l, y_t, x_r, y_b)`` in patch units; fields ``[N, N]`` bool.
Overlays are drawn in pixel coordinates with patch p covering
``[x_p * P, (x_p + 1) * P) x [y_p * P, (y_p + 1) * P)``.
"""

from winft_lightning.figures.attention import (
    attention_maps_figure,
    dip_figure,
    rollout_figure,
    uncertainty_rows_figure,
)
from winft_lightning.figures.base import display_images, save, to_hwc
from winft_lightning.figures.claims import (
    attention_distance_figure,
    difference_figure,
    perturbation_curves_figure,
    trained_deltas_figure,
    verdict_figure,
)
from winft_lightning.figures.tradeoff import tradeoff_figure
from winft_lightning.figures.windows import field_figure, responsive_field_figure, window_figure

__all__ = [
    "attention_distance_figure",
    "attention_maps_figure",
    "difference_figure",
    "dip_figure",
    "display_images",
    "field_figure",
    "perturbation_curves_figure",
    "responsive_field_figure",
    "rollout_figure",
    "save",
    "to_hwc",
    "tradeoff_figure",
    "trained_deltas_figure",
    "uncertainty_rows_figure",
    "verdict_figure",
    "window_figure",
]
