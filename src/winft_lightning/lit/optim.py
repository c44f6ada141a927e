"""Learning-rate schedule of the paper's recipe: linear warm-up, then cosine decay."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 500, min_ratio: float = 0.0
) -> LambdaLR:
    """Per-step LR factor: ``step / warmup`` for the warm-up, then cosine from 1 to ``min_ratio``.

    ``warmup_steps`` is clipped to a tenth of ``total_steps`` so tiny runs still decay."""
    total = max(1, int(total_steps))
    warm = min(int(warmup_steps), total // 10)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
