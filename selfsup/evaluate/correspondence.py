"""Dense correspondence: does a network's per-pixel descriptor find the same point in a warped image?

For each held-out image A, a random homography (seeded, :mod:`selfsup.augment.warps`) makes B, so
every pixel's true match is known exactly. Pixels ``a`` of A whose match ``H a`` falls inside B are
sampled; each is matched to the valid pixel of B whose descriptor is nearest (Euclidean) to A's at
``a``, and PCK@k is the share of points whose predicted match lies within k pixels of the true one
(k = 1, 3, 5 at the input's size). The baselines are the same network at random initialisation and
raw pixels: each pixel described by the standardised 5x5 patch around it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.augment import warps

CORRESPONDENCE_PROTOCOL = ("for each test image a random homography (rotation <= {rotation} deg, scale {scale}, shear "
                           "<= {shear} deg, shift <= {shift} of the side, perspective {perspective}, flip p {flip_p}; "
                           "seed {seed}) gives a second image with every pixel's match known exactly; {points} draws (with "
                           "replacement) per image of the pixels whose match lies inside the second image, each matched to the pixel, among "
                           "the second image's pixels the warp fills, with the nearest descriptor (Euclidean); PCK@k: the share within k pixels "
                           "of the true match (Florence et al. 2018)")
WARP = {"rotation": 30.0, "scale": (0.8, 1.2), "shear": 10.0, "shift": 0.1, "perspective": 0.1, "flip_p": 0.0}
"""The evaluation's warps: those of training without flips (a flip makes left and right of symmetric
objects ambiguous, which is not what PCK should measure)."""


def patch_descriptors(images: Tensor, size: int = 5) -> Tensor:
    """The raw-pixel baseline: each pixel's ``size x size`` patch (reflection-padded), standardised
    (zero mean, unit norm), ``(N, C * size^2, H, W)``."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    n, c, h, w = x.shape
    padded = F.pad(x, [size // 2] * 4, mode="reflect")
    patches = F.unfold(padded, size).view(n, c * size * size, h, w)
    patches = patches - patches.mean(dim=1, keepdim=True)
    return F.normalize(patches, dim=1)


@torch.no_grad()
def correspondence_pck(describe: Callable[[Tensor], Tensor], images: Tensor, *, points: int = 64,
                       ks: Sequence[int] = (1, 3, 5), seed: int = 0, batch_size: int = 64,
                       device: torch.device | str | None = None, warp: dict | None = None,
                       keep: int = 0) -> dict:
    """PCK@k of ``describe`` (images ``(n, C, H, W)`` in [0, 1] to descriptors ``(n, D, H, W)``) over
    ``images``; with ``keep``, also the first ``keep`` pairs and their matches (for the picture).

    Returns:
        ``{"pck@1": ..., "pck@3": ..., "pck@5": ..., "points": total}`` (plus ``"pairs"`` with ``keep``).
    """
    warp = {**WARP, **(warp or {})}
    device = torch.device(device) if device is not None else images.device
    generator = torch.Generator().manual_seed(seed)
    errors, kept = [], []
    for start in range(0, len(images), batch_size):
        a = images[start:start + batch_size].to(device)
        a = a.float() / 255 if a.dtype == torch.uint8 else a.float()
        n, _, height, width = a.shape
        homographies = warps.random_homographies(n, (height, width), generator=generator, **warp).to(device)
        b, valid = warps.warp(a, homographies)
        d_a, d_b = describe(a).float(), describe(b).float()
        centres = warps.pixel_centres((height, width), device)
        truth = warps.map_points(homographies, centres.double().expand(n, -1, -1)).float()  # (n, HW, 2)
        usable = warps.inside(truth, (height, width))
        for i in range(n):
            candidates = usable[i].nonzero().squeeze(1)
            if len(candidates) == 0:
                continue
            pick = candidates[torch.randint(len(candidates), (min(points, len(candidates)),), generator=generator)
                              .to(device)]
            queries = d_a[i].flatten(1)[:, pick].T  # (P, D)
            pool = valid[i].flatten().nonzero().squeeze(1)
            keys = d_b[i].flatten(1)[:, pool].T  # (V, D)
            nearest = pool[torch.cdist(queries, keys).argmin(dim=1)]
            error = (centres[nearest] - truth[i, pick]).norm(dim=1)
            errors.append(error.cpu())
            if len(kept) < keep:
                kept.append((a[i].cpu(), b[i].cpu(), centres[pick].cpu(), centres[nearest].cpu(),
                             truth[i, pick].cpu()))
    every = torch.cat(errors) if errors else torch.zeros(0)
    result = {f"pck@{k}": float((every <= k).float().mean()) if len(every) else 0.0 for k in ks}
    result["points"] = len(every)
    if keep:
        result["pairs"] = kept
    return result


def plot_matches(pairs: list, path: str | os.PathLike, *, threshold: float = 3.0, title: str | None = None) -> Path:
    """Image pairs side by side with lines from each sampled point to its predicted match: green
    within ``threshold`` pixels of the true match, red otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from selfsup._io import atomic_write

    rows = len(pairs)
    fig, axes = plt.subplots(rows, 1, figsize=(6, 3 * rows), squeeze=False)
    for ax, (a, b, source, predicted, truth) in zip(axes[:, 0], pairs):
        width = a.shape[-1]
        both = torch.cat((a, b), dim=-1)
        image = both[0] if both.shape[0] == 1 else both.permute(1, 2, 0)
        ax.imshow(image.clamp(0, 1).numpy(), cmap="gray" if both.shape[0] == 1 else None, vmin=0, vmax=1)
        good = (predicted - truth).norm(dim=1) <= threshold
        for (x0, y0), (x1, y1), ok in zip(source.tolist(), predicted.tolist(), good.tolist()):
            ax.plot([x0 - 0.5, x1 - 0.5 + width], [y0 - 0.5, y1 - 0.5], color="#2da44e" if ok else "#cf222e",
                    linewidth=0.6, alpha=0.8)
        ax.set_axis_off()
        ax.set_title(f"{int(good.sum())} of {len(good)} within {threshold:g} px", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        return atomic_write(Path(path), lambda file: fig.savefig(file, format="png", dpi=110))
    finally:
        plt.close(fig)


def correspondence_entry(describe: Callable[[Tensor], Tensor], images: Tensor, *, data: str, points: int = 64,
                         seed: int = 0, device=None, picture: str | os.PathLike | None = None) -> dict:
    """:func:`correspondence_pck` as a results.json entry, with the raw-pixel baseline beside it (the
    random-initialisation floor is added by the caller, as for every evaluation)."""
    found = correspondence_pck(describe, images, points=points, seed=seed, device=device, keep=4 if picture else 0)
    raw = correspondence_pck(patch_descriptors, images, points=points, seed=seed, device=device)
    if picture:
        plot_matches(found.pop("pairs"), picture, title="predicted matches (green: within 3 px of the truth)")
    entry = {key: value for key, value in found.items() if key.startswith("pck@")}
    entry.update({"points": found["points"], "data": data,
                  "raw_pixels": {key: value for key, value in raw.items() if key.startswith("pck@")},
                  "protocol": CORRESPONDENCE_PROTOCOL.format(points=points, seed=seed, **WARP)})
    return entry


PAIRS_PROTOCOL = ("held-out image pairs with given correspondences: each given match's point in the first image is "
                  "matched to the pixel of the second image with the nearest descriptor (Euclidean); PCK@k: the "
                  "share of matches (at most {points} per pair) predicted within k pixels of the given point")


@torch.no_grad()
def pairs_pck(describe: Callable[[Tensor], Tensor], pairs, *, points: int = 64, ks: Sequence[int] = (1, 3, 5),
              device: torch.device | str | None = None) -> dict:
    """PCK@k of ``describe`` on :class:`selfsup.data.pairs.ImagePairs`: the given matches (the first
    ``points`` of each pair) as the truth."""
    device = torch.device(device) if device is not None else pairs.images.device
    errors = []
    for i in range(len(pairs)):
        a, b = (x[i:i + 1].to(device).float() / 255 for x in (pairs.images, pairs.images_b))
        m = pairs.matches[i, :min(points, int(pairs.counts[i]))].to(device)
        d_a, d_b = describe(a).float(), describe(b).float()
        queries = warps.sample_at(d_a, m[None, :, :2])[0]  # (P, D) at the given points of a
        nearest = torch.cdist(queries, d_b[0].flatten(1).T).argmin(dim=1)
        centres = warps.pixel_centres(tuple(b.shape[-2:]), device)
        errors.append((centres[nearest] - m[:, 2:]).norm(dim=1).cpu())
    every = torch.cat(errors)
    return {**{f"pck@{k}": float((every <= k).float().mean()) for k in ks}, "points": len(every)}


def pairs_entry(describe: Callable[[Tensor], Tensor], pairs, *, data: str, points: int = 64, device=None) -> dict:
    """:func:`pairs_pck` as the results.json ``correspondence_pairs`` entry, raw-pixel patches beside it."""
    found = pairs_pck(describe, pairs, points=points, device=device)
    raw = pairs_pck(patch_descriptors, pairs, points=points, device=device)
    return {**found, "data": data, "raw_pixels": {k: v for k, v in raw.items() if k.startswith("pck@")},
            "protocol": PAIRS_PROTOCOL.format(points=points)}


CORRESPONDENCE_IMAGES = 500
"""Test images a run's own correspondence evaluation uses (the first ones of the test split)."""


def dense_evaluations(method, test, *, data: str, device=None) -> dict:
    """A dense method's ``extra_evaluations``: ``correspondence`` on the first test images, with its
    ``descriptor_encoder`` in eval mode (and ``correspondence_pairs`` on image pairs with given matches)."""
    from selfsup.nn import eval_mode

    images = test.images[:CORRESPONDENCE_IMAGES]
    encoder = method.descriptor_encoder()
    with eval_mode(encoder):
        entries = {"correspondence": correspondence_entry(encoder, images, data=data, device=device)}
        if hasattr(test, "matches"):  # pairs with given correspondences: PCK on them too
            entries["correspondence_pairs"] = pairs_entry(encoder, test, data=data, device=device)
    return entries
