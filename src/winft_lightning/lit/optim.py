"""Learning-rate schedule of the paper's recipe (linear warm-up, then cosine decay), and the
optimizer's parameter groups by name (``model.param_groups``)."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import nn
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


GROUP_KEYS = frozenset({"match", "lr_scale", "weight_decay"})


def check_param_groups(groups: Any, option: str = "model.param_groups") -> None:
    """A list of mappings with ``match`` (a pattern or a list of them) and optionally
    ``lr_scale`` and ``weight_decay`` (numbers >= 0), else a ValueError naming ``option[i]``."""
    if groups is None:
        return
    if isinstance(groups, str | Mapping) or not isinstance(groups, Sequence):
        raise ValueError(
            f"{option} must be a list of {{match, lr_scale, weight_decay}}, got {groups!r}"
        )
    for i, group in enumerate(groups):
        where = f"{option}[{i}]"
        if not isinstance(group, Mapping) or set(group) - GROUP_KEYS or "match" not in group:
            raise ValueError(
                f"{where}: keys must be {sorted(GROUP_KEYS)} with match, got {group!r}"
            )
        for key in ("lr_scale", "weight_decay"):
            value = group.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise ValueError(f"{where}: {key} must be a number >= 0, got {value!r}")


def param_groups(
    named: Iterable[tuple[str, nn.Parameter]],
    groups: Sequence[Mapping[str, Any]] | None,
    lr: float,
    weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: each of ``groups`` takes the parameters whose name
    matches one of its ``match`` glob patterns (``fnmatch``, e.g. ``pos_embed``,
    ``blocks.*.attn.qkv.*``), at ``lr * lr_scale`` (default 1) and its own ``weight_decay``
    (default the optimizer's); every other parameter forms one last group at ``lr``. Only
    parameters that require grad. A parameter two groups match, a group that matches nothing,
    or an unknown key is refused, naming ``model.param_groups[i]``. ``groups`` None or empty:
    one group, as ``module.parameters()`` gives it."""
    params = [(n, p) for n, p in named if p.requires_grad]
    taken: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    check_param_groups(groups)
    for i, group in enumerate(groups or ()):
        where = f"model.param_groups[{i}]"
        patterns = [group["match"]] if isinstance(group["match"], str) else list(group["match"])
        chosen = [(n, p) for n, p in params if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
        if not chosen:
            raise ValueError(f"{where}: match={patterns} matches no trainable parameter")
        for n, _ in chosen:
            if n in taken:
                raise ValueError(f"{where} and model.param_groups[{taken[n]}] both match {n}")
            taken[n] = i
        scale = group.get("lr_scale")  # None (or absent): the optimizer's lr, as weight_decay
        entry = {"params": [p for _, p in chosen], "lr": lr * (1.0 if scale is None else scale)}
        if group.get("weight_decay") is not None:
            entry["weight_decay"] = float(group["weight_decay"])
        elif weight_decay is not None:
            entry["weight_decay"] = float(weight_decay)
        out.append(entry)
    rest = [p for n, p in params if n not in taken]
    if rest or not out:
        out.append({"params": rest, "lr": lr})
    return out
