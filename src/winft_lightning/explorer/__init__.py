"""The interactive explorer: one self-contained, offline HTML file per set of analysed images,
in which a click on a patch draws its U row and U' hits, its AWD window at an alpha slider's
value, its responsive field at a beta slider's value, its attention per block (and head), the
DIP order, the rollout and the mean attention distances, beside WinfT's predicted W.

:mod:`.pack` packs an :class:`~winft_lightning.core.analysis.Analysis` into the page's data
(pure; the encodings are :mod:`.codec`'s), :mod:`.build` runs the analysis it needs on a model,
:mod:`.page` writes the HTML (the template ``explorer.html`` and ``explorer.js``, package
data). ``python -m winft_lightning.explore`` is the CLI (:mod:`winft_lightning.stages.explore`).
"""

from .build import analyse_for_explorer, explore
from .pack import DEFAULT_BETAS, pack_explorer, pack_images
from .page import explorer_html, iframe_html, write_explorer

__all__ = [
    "DEFAULT_BETAS",
    "analyse_for_explorer",
    "explore",
    "explorer_html",
    "iframe_html",
    "pack_explorer",
    "pack_images",
    "write_explorer",
]
