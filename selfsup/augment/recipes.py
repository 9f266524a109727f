"""The augmentations of the papers (SimCLR, MoCo v2, BYOL, DINO, evaluation) as :class:`View` lists."""

from __future__ import annotations

from dataclasses import replace

from selfsup.augment._common import _pair
from selfsup.augment.runner import Augmentation, View


RECIPES = ("simclr", "moco_v2", "byol", "dino", "none", "eval")


def recipe(name: str, size: int | tuple[int, int], *, n_local: int | None = None) -> Augmentation:
    """The augmentation of a paper, batched.

    * ``"simclr"`` (Chen et al. 2020): 2 views; crop scale 0.08-1, flip 0.5,
      colour jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2, blur 0.5
      (sigma 0.1-2, kernel about 10% of the side).
    * ``"moco_v2"`` (Chen et al. 2020b): as simclr with crop scale 0.2-1.
    * ``"byol"`` (Grill et al. 2020): 2 asymmetric views, jitter (0.4, 0.4,
      0.2, 0.1) p 0.8, grayscale 0.2, crop 0.08-1; blur 1.0 / 0.1, solarize
      0 / 0.2.
    * ``"dino"`` (Caron et al. 2021): 2 global crops (scale 0.4-1, at ``size``,
      BYOL's colour, blur 1.0 / 0.1, solarize 0 / 0.2) then ``n_local``
      (default 6) local crops (scale 0.05-0.4, side ``round(size * 96 / 224)``,
      blur 0.5).
    * ``"none"`` / ``"eval"``: one view, the image as float (resized to
      ``size`` with antialiased bilinear if it differs).

    Args:
        name: one of :data:`RECIPES`.
        size: output side or ``(height, width)`` of the (global) views.
        n_local: number of DINO local crops (dino only).

    Returns:
        An :class:`Augmentation`.

    Example:
        >>> import torch
        >>> views = recipe("dino", 32, n_local=2)(torch.rand(4, 3, 32, 32))
        >>> [tuple(v.shape[-2:]) for v in views]
        [(32, 32), (32, 32), (14, 14), (14, 14)]
    """
    pair = _pair(size)
    if n_local is not None and name != "dino":
        raise ValueError(f"n_local is a 'dino' option, not one of recipe {name!r}")
    if name in ("simclr", "moco_v2"):
        view = View(size=pair, scale=(0.08, 1.0) if name == "simclr" else (0.2, 1.0))
        return Augmentation([view, view])
    if name in ("byol", "dino"):
        first = View(size=pair, jitter=(0.4, 0.4, 0.2, 0.1), blur_p=1.0)
        second = replace(first, blur_p=0.1, solarize_p=0.2)
        if name == "byol":
            return Augmentation([first, second])
        n_local = 6 if n_local is None else n_local
        if not isinstance(n_local, int) or n_local < 0:
            raise ValueError(f"n_local must be an int >= 0, got {n_local!r}")
        local_size = (max(1, round(pair[0] * 96 / 224)), max(1, round(pair[1] * 96 / 224)))
        local = replace(first, size=local_size, scale=(0.05, 0.4), blur_p=0.5)
        globals_ = [replace(first, scale=(0.4, 1.0)), replace(second, scale=(0.4, 1.0))]
        return Augmentation(globals_ + [local] * n_local)
    if name in ("none", "eval"):
        return Augmentation([View(size=pair, scale=None, flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)])
    raise ValueError(f"unknown augmentation recipe {name!r}; known recipes: {', '.join(RECIPES)}")
