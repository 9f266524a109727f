"""The augmentations of the papers as :class:`View` lists, and key-by-key overrides of them."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from selfsup.augment._common import _pair
from selfsup.augment.runner import Augmentation, View

RECIPES = ("simclr", "instdisc", "moco_v1", "moco_v2", "byol", "dino", "cmc", "clip", "flip", "shift_flip", "none",
           "eval")

# SimCLR's colour distortion of strength s is ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s) applied with
# probability 0.8, then grayscale with probability 0.2 (Chen et al. 2020, appendix A).
_SIMCLR_STRENGTH = {"cifar": 0.5, "imagenet": 1.0}
# Images up to this side follow a paper's CIFAR-10 settings, larger ones its ImageNet settings.
SMALL_IMAGE_SIDE = 64
_DINO_LOCAL_CROPS = 8  # main_dino.py's default --local_crops_number


def _simclr_jitter(strength: float) -> tuple[float, float, float, float]:
    return (0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)


def recipe(name: str, size: int | tuple[int, int], *, n_local: int | None = None) -> Augmentation:
    """The augmentation of a paper, batched.

    * ``"simclr"`` (Chen et al. 2020): 2 views of random resized crop (scale 0.08-1, ratio
      3/4-4/3), flip 0.5, colour distortion of strength s (jitter ``(0.8s, 0.8s, 0.8s, 0.2s)``
      with p 0.8, grayscale 0.2). Side <= 64: the paper's CIFAR-10 setting, s = 0.5 and no
      blur (appendix B.9: "we do not use Gaussian blur" on CIFAR). Larger: the ImageNet setting,
      s = 1.0 and Gaussian blur with p 0.5 (sigma 0.1-2, kernel 10% of the side).
    * ``"instdisc"`` (Wu et al. 2018, the official ``lemniscate`` code): one view of the
      ``"moco_v1"`` augmentation below, which MoCo v1 took from InstDisc.
    * ``"moco_v1"`` (He et al. 2020, the official ``main_moco.py`` without ``--aug-plus``): crop
      scale 0.2-1, grayscale 0.2, jitter (0.4, 0.4, 0.4, 0.4) always, flip, no blur. The official
      pipeline turns images gray before the jitter, ours after: brightness, contrast and
      saturation commute with the grayscale conversion (up to clipping), the hue shift does not.
    * ``"moco_v2"`` (Chen et al. 2020b, the official ``main_moco.py --aug-plus``): crop scale
      0.2-1, jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, blur p 0.5 (sigma 0.1-2), flip,
      at every size.
    * ``"byol"`` (Grill et al. 2020, table 6): 2 asymmetric views, crop 0.08-1, flip, jitter
      (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2; blur 1.0 / 0.1, solarize 0 / 0.2.
    * ``"dino"`` (Caron et al. 2021, the official ``main_dino.py``): 2 global crops (scale
      0.4-1, at ``size``, BYOL's colour, blur 1.0 / 0.1, solarize 0 / 0.2) then ``n_local``
      (default 8) local crops (scale 0.05-0.4, side ``round(size * 96 / 224)``, blur 0.5).
    * ``"cmc"`` (Tian et al. 2019, the official ``train_CMC.py``): one view, random resized
      crop scale 0.2-1 and flip, no colour change: CMC splits it into L and ab itself.
    * ``"clip"`` (Radford et al. 2021, section 2.5: "a random square crop from resized images was
      the only data augmentation"): one view, random resized crop scale 0.5-1, no flip, no colour
      change. On images that are already square the paper's crop is near the identity; the
      scale range is ours, so that small images still see some variety.
    * ``"flip"``: one view, the image with a random horizontal flip (p 0.5) and nothing else: the
      pretext tasks (rotation, jigsaw, relative patch location) make their own inputs from it.
    * ``"shift_flip"`` (RotNet's CIFAR loader, gidariss/FeatureLearningRotNet ``dataloader.py``:
      ``RandomCrop(32, padding=4)`` then ``RandomHorizontalFlip``): one view, the whole image shifted by
      up to ``round(side / 8)`` pixels (4 at 32, 4 at 28) with a black border, and flipped (p 0.5).
    * ``"none"`` / ``"eval"``: one view, the image as float (resized to ``size`` with
      antialiased bilinear if it differs).

    Where every recipe differs from its official code, by choice: crops are resized with the
    antialiased bilinear filter (torchvision's default, and MoCo's and InstDisc's), where SimCLR's
    code, BYOL's and DINO's ``main_dino.py`` resize bicubically; one filter serves every recipe in the
    batched, compiled and fused paths. They are not the same pixels: on Fashion-MNIST's 28-pixel
    crops (scale 0.08-1) they differ by 2.77 gray levels of 255 per pixel on average, up to 44 at an
    edge (``benchmarks/interpolation.py``), bicubic being the sharper. The blur's kernel is 10% of the side (SimCLR's rule, odd,
    at least 3 taps) for every recipe, where MoCo v2's code blurs with PIL's unbounded
    ``GaussianBlur(radius=sigma)``: at 28-32 pixels the kernel has 3 taps, so sigmas near 2 blur
    less than PIL's would (as in SimCLR's own CIFAR-sized kernel).

    Args:
        name: one of :data:`RECIPES`.
        size: output side or ``(height, width)`` of the (global) views.
        n_local: number of DINO local crops (dino only).

    Returns:
        An :class:`Augmentation`.

    Examples:
        >>> import torch
        >>> views = recipe("dino", 32, n_local=2)(torch.rand(4, 3, 32, 32))
        >>> [tuple(v.shape[-2:]) for v in views]
        [(32, 32), (32, 32), (14, 14), (14, 14)]
    """
    pair = _pair(size)
    if n_local is not None and name != "dino":
        raise ValueError(f"n_local is a 'dino' option, not one of recipe {name!r}")
    if name == "simclr":
        small = max(pair) <= SMALL_IMAGE_SIDE
        strength = _SIMCLR_STRENGTH["cifar" if small else "imagenet"]
        view = View(size=pair, jitter=_simclr_jitter(strength), blur_p=0.0 if small else 0.5)
        return Augmentation([view, view])
    if name in ("instdisc", "moco_v1"):
        view = View(size=pair, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0, blur_p=0.0)
        return Augmentation([view] if name == "instdisc" else [view, view])
    if name == "moco_v2":
        view = View(size=pair, scale=(0.2, 1.0))
        return Augmentation([view, view])
    if name in ("byol", "dino"):
        first = View(size=pair, jitter=(0.4, 0.4, 0.2, 0.1), blur_p=1.0)
        second = replace(first, blur_p=0.1, solarize_p=0.2)
        if name == "byol":
            return Augmentation([first, second])
        local_size = (max(1, round(pair[0] * 96 / 224)), max(1, round(pair[1] * 96 / 224)))
        local = replace(first, size=local_size, scale=(0.05, 0.4), blur_p=0.5)
        globals_ = [replace(first, scale=(0.4, 1.0)), replace(second, scale=(0.4, 1.0))]
        return Augmentation(globals_, local, _DINO_LOCAL_CROPS if n_local is None else n_local)
    if name == "cmc":
        return Augmentation([View(size=pair, scale=(0.2, 1.0), flip_p=0.5, jitter_p=0.0, gray_p=0.0, blur_p=0.0)])
    if name == "clip":
        return Augmentation([View(size=pair, scale=(0.5, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)])
    if name == "flip":
        return Augmentation([View(size=pair, scale=None, flip_p=0.5, jitter_p=0.0, gray_p=0.0, blur_p=0.0)])
    if name == "shift_flip":
        pad = max(1, round(min(pair) / 8))
        return Augmentation([View(size=pair, scale=None, flip_p=0.5, jitter_p=0.0, gray_p=0.0, blur_p=0.0, pad=pad)])
    if name in ("none", "eval"):
        return Augmentation([View(size=pair, scale=None, flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)])
    raise ValueError(f"unknown augmentation recipe {name!r}; known recipes: {', '.join(RECIPES)}")


VIEW_FIELDS = tuple(f.name for f in fields(View))


def _changed(view: View, changes: dict[str, Any], where: str) -> View:
    unknown = set(changes) - set(VIEW_FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown view parameters {sorted(unknown)}; a view has {', '.join(VIEW_FIELDS)}")
    # One field at a time, so that a bad value is reported under its own key.
    for name, value in changes.items():
        try:
            view = replace(view, **{name: value})
        except (ValueError, TypeError) as error:
            raise ValueError(f"{where}.{name}: {error}") from None
    return view


def override(augmentation: Augmentation, *, view: dict[str, Any] | None = None,
             views: list[dict[str, Any]] | None = None, n_local: int | None = None,
             local: dict[str, Any] | None = None) -> Augmentation:
    """A copy of ``augmentation`` with some :class:`View` parameters replaced.

    Args:
        view: parameters set on every global view (e.g. ``{"jitter": (0.4, 0.4, 0.2, 0.1)}``).
        views: one dict per global view, in order, applied after ``view``; may be shorter.
        n_local: the number of local crops (multi-crop recipes only).
        local: parameters set on the local crops (multi-crop recipes only).

    Raises:
        ValueError: an unknown parameter, a bad value, more ``views`` entries than global views,
            or local-crop settings on a recipe without local crops; the message names the key
            as ``view.<name>``, ``views[i].<name>``, ``local.<name>`` or ``n_local``.

    Examples:
        >>> dino = override(recipe("dino", 28), n_local=4, local={"size": 12}, views=[{}, {"solarize_p": 0.5}])
        >>> dino.n_local, dino.local.size, dino.views[1].solarize_p
        (4, (12, 12), 0.5)
    """
    views = views or []
    if len(views) > len(augmentation.views):
        raise ValueError(f"views: {len(views)} entries, but this augmentation has {len(augmentation.views)} "
                         f"global views")
    if augmentation.local is None and (local or n_local):
        raise ValueError(f"{'local' if local else 'n_local'}: this augmentation has no local crops; use a "
                         f"multi-crop recipe (dino)")
    result = []
    for i, original in enumerate(augmentation.views):
        changed = _changed(original, view or {}, "view")
        result.append(_changed(changed, views[i], f"views[{i}]") if i < len(views) else changed)
    local_view = None if augmentation.local is None else _changed(augmentation.local, local or {}, "local")
    count = augmentation.n_local if n_local is None else n_local
    try:
        return Augmentation(result, local_view, count)
    except ValueError as error:
        raise ValueError(f"n_local: {error}") from None
