"""One batch's patch-interaction analysis: capture -> U -> AWD windows per alpha, DIP order,
attention rollout, responsive fields, as one :class:`Analysis` from :func:`analyze`.

``analyze`` (the mask shards), ``visualize`` (the paper's figures), the run-figure callback and
the study's figures all go through here. The math is :mod:`winft_lightning.core.interactions`, the
capture :mod:`winft_lightning.core.capture`; this module only wires them in one pass over the
blocks (SPEC.md 1-4).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from winft_lightning.core import interactions as ia
from winft_lightning.core.attention_distance import mean_attention_distance
from winft_lightning.core.capture import iter_block_attention
from winft_lightning.core.interactions import Grid

# conf/analyze/default.yaml's alphas, the ones the masks are made at (a test holds them equal)
DEFAULT_ALPHAS = (0.025, 0.05, 0.1, 0.2, 0.5, 1.0)

__all__ = ["DEFAULT_ALPHAS", "Analysis", "analyze", "default_patches"]


def default_patches(grid: Grid) -> list[int]:
    """Four patches spread over the grid (centre, upper left, upper right, lower centre)."""
    h, w = grid
    cells = [(h // 2, w // 2), (h // 4, w // 4), (h // 4, (3 * w) // 4), ((3 * h) // 4, w // 2)]
    return list(dict.fromkeys(y * w + x for y, x in cells))


@dataclass
class Analysis:
    """One batch of B images on a patch grid ``(h, w)``, N = h * w.

    windows: ``{alpha: [B, N, 4]}`` long (SPEC 2); order: DIP order ``[B, N]`` long (SPEC 3);
    u: U ``[B, N, N]`` (SPEC 1; None when the windows and order came from a mask shard);
    patches: the chosen patch ids of ``rows``; rows: ``[B, l, n, N]`` head-mean attention rows
    of those patches per block; rollout: ``[B, N]`` attention-rollout relevance for CLS;
    cls_attention: ``[B, N]`` the last block's CLS-to-patch attention, mean over heads;
    attention_distance: ``[B, l, k]`` each block's and head's mean attention distance;
    head_rows: ``[B, l, k, n, N]`` the rows of ``patches`` per block and head."""

    grid: Grid
    windows: dict[float, Tensor]
    order: Tensor | None
    u: Tensor | None = None
    patches: list[int] = field(default_factory=list)
    rows: Tensor | None = None
    rollout: Tensor | None = None
    cls_attention: Tensor | None = None
    attention_distance: Tensor | None = None
    head_rows: Tensor | None = None

    def window(self, alpha: float) -> Tensor:
        """Windows at ``alpha``: the analyzed ones, else computed from U."""
        if alpha in self.windows:
            return self.windows[alpha]
        if self.u is None:
            raise KeyError(f"alpha={alpha} is not among {sorted(self.windows)} and U is absent")
        return ia.awd_windows(self.u, alpha, self.grid)

    def field(self, alpha: float, beta: float) -> Tensor:
        """Responsive fields S_p (SPEC 4, the WinfT ground truth) ``[B, N, N]`` bool."""
        if self.order is None:
            raise ValueError("responsive fields need the DIP order")
        return ia.responsive_field(self.window(alpha), self.order, beta, self.grid)

    def fields(self, beta: float) -> dict[float, Tensor]:
        """The responsive fields at every analyzed alpha and this ``beta``."""
        return {alpha: self.field(alpha, beta) for alpha in self.windows}

    def column_variance(self) -> Tensor:
        """``v_p = Var_i U[i, p]`` ``[B, N]``, the quantity the DIP order sorts."""
        if self.u is None:
            raise ValueError("the column variance needs U")
        return ia.column_variance(self.u)

    def cpu(self) -> Analysis:
        """The same analysis with every tensor on the CPU."""

        def c(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.cpu()

        return replace(
            self,
            windows={a: w.cpu() for a, w in self.windows.items()},
            order=c(self.order),
            u=c(self.u),
            rows=c(self.rows),
            rollout=c(self.rollout),
            cls_attention=c(self.cls_attention),
            attention_distance=c(self.attention_distance),
            head_rows=c(self.head_rows),
        )


def analyze(
    model: nn.Module,
    images: Tensor,
    alphas: Sequence[float] = (),
    grid: Grid | None = None,
    *,
    patches: Sequence[int] = (),
    rollout: bool = False,
    distances: bool = False,
    heads: bool = False,
) -> Analysis:
    """Run ``images [B, 3, H, W]`` (the analyzed view, normalised as the model takes it)
    through the timm ViT ``model`` once, block by block, and return its :class:`Analysis`.

    Per block only the running U statistics are kept (and, when asked for, the rows of
    ``patches`` and the ``[B, T, T]`` rollout product), never all l maps. grid defaults to
    the model's patch grid. ``rollout`` also keeps the last block's CLS attention;
    ``distances`` each block's and head's mean attention distance; ``heads`` also keeps the
    rows of ``patches`` per head (``head_rows``). Tensors are on the images' device (rows,
    rollout and CLS attention in float32)."""
    if grid is None:
        grid = tuple(int(g) for g in model.patch_embed.grid_size)
    n = grid[0] * grid[1]
    patches = [int(p) for p in patches]
    if any(not 0 <= p < n for p in patches):
        raise ValueError(f"patches {patches} outside 0..{n - 1}")
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    idx = torch.as_tensor(patches, dtype=torch.long, device=images.device)
    rows: list[Tensor] = []
    head_rows: list[Tensor] = []
    joint: Tensor | None = None
    cls: Tensor | None = None
    reach: list[Tensor] = []
    full = rollout or distances

    def patch_maps() -> Iterator[Tensor]:
        nonlocal joint, cls
        for attn in iter_block_attention(model, images, patches_only=not full):
            if distances:
                reach.append(mean_attention_distance(attn, grid, prefix))
            if rollout:  # full [B, k, T, T] map: rollout needs the prefix rows
                joint = ia.rollout_step(joint, attn)
                cls = attn[:, :, 0, prefix:].mean(dim=1).float()  # the last block's stays
            if full:
                attn = attn[:, :, prefix:, prefix:]
            if patches:
                rows.append(attn[:, :, idx, :].mean(dim=1).float())
                if heads:
                    head_rows.append(attn[:, :, idx, :].float())
            yield attn

    u = ia.uncertainty_map(patch_maps())
    if u.shape[-1] != n:
        raise ValueError(f"model has N={u.shape[-1]} patches, grid {tuple(grid)} has {n}")
    return Analysis(
        grid=tuple(grid),
        windows={a: ia.awd_windows(u, a, grid) for a in alphas},
        order=ia.dip_order(u),
        u=u,
        patches=patches,
        rows=torch.stack(rows, dim=1) if patches else None,
        rollout=joint[:, 0, prefix:].float() if rollout else None,
        cls_attention=cls if rollout else None,
        attention_distance=torch.stack(reach, dim=1) if distances else None,
        head_rows=torch.stack(head_rows, dim=1) if patches and heads else None,
    )
