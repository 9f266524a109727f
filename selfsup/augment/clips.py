"""Views of video clips: the same random crop, flip and colour change for every frame of a clip.

Time-contrastive methods compare frames of one clip, so a view must not change from frame to frame
(else the network could tell frames apart by their augmentation); each clip draws its parameters
once (:func:`sample_crop_boxes`, :func:`sample_jitter`) and all its frames get them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.augment._common import _check_p, to_float
from selfsup.augment.colour import JitterParams, apply_color_jitter, sample_jitter
from selfsup.augment.geometry import resized_crop, sample_crop_boxes


def clip_views(clips: Tensor, size: int | None = None, *, scale: tuple[float, float] = (0.6, 1.0),
               flip_p: float = 0.5, jitter: tuple[float, float, float, float] | None = (0.4, 0.4, 0.4, 0.1),
               jitter_p: float = 0.8, generator: torch.Generator | None = None) -> Tensor:
    """``(B, T, C, H, W)`` clips (uint8 or float in [0, 1]) -> float ``(B, T, C, size, size)`` views,
    each clip with one random resized crop (area ``scale``, torchvision's rule), one flip and one
    colour jitter (None: none; on 1-channel clips its brightness and contrast) for all its frames.

    Examples:
        >>> clips = torch.randint(0, 256, (2, 4, 3, 16, 16), dtype=torch.uint8)
        >>> views = clip_views(clips, 12, generator=torch.Generator().manual_seed(0))
        >>> views.shape, bool((views[:, 1:] - views[:, :1]).abs().max() > 0)
        (torch.Size([2, 4, 3, 12, 12]), True)
    """
    if clips.ndim != 5:
        raise ValueError(f"clips must be (B, T, C, H, W), got shape {tuple(clips.shape)}")
    _check_p(flip_p, "flip_p")
    b, t, c, h, w = clips.shape
    device = clips.device
    boxes = sample_crop_boxes(b, h, w, scale, generator=generator, device=device)
    draw = torch.rand(b, generator=generator, device=generator.device if generator is not None else device)
    flip = (draw < flip_p).to(device)
    frames = resized_crop(clips.reshape(b * t, c, h, w), boxes.repeat_interleave(t, 0), size or h,
                          flip.repeat_interleave(t, 0))
    if jitter is not None:  # 1-channel clips: brightness and contrast only, as the image views
        params = sample_jitter(b, *jitter, p=jitter_p, generator=generator, device=device)
        frames = apply_color_jitter(frames, JitterParams(*(p.repeat_interleave(t, 0) for p in params)))
    return to_float(frames).reshape(b, t, c, *frames.shape[-2:])


def clip_to_float(clips: Tensor) -> Tensor:
    """uint8 clips (or images, any shape) to float in [0, 1]; float ones as they are."""
    return clips.float().div_(255) if clips.dtype == torch.uint8 else clips.float()


__all__ = ["clip_to_float", "clip_views"]
