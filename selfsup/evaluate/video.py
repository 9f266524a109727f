"""Video evaluations: mask propagation scored as DAVIS-2017 does, and time-contrastive measures.

**Propagation** (the protocol of Jabri et al. 2020, ``ajabri/videowalk`` ``code/test.py``, which
later video-correspondence work shares): per-pixel features of every frame (L2-normalised over
channels, at the encoder's grid); the first frame's instance masks as soft one-hot labels resized
to the grid (bilinear); each later frame's labels are the softmax-weighted sum of the ``topk`` most
similar key pixels (similarity / ``temperature``) among the first frame (its true labels, anywhere)
and the ``context`` previous frames (their predicted soft labels, only within ``radius`` grid cells);
the labels are resized to the frame (bilinear) and each pixel takes its argmax. Scores as the
DAVIS-2017 semi-supervised benchmark (``davisvideochallenge/davis2017-evaluation``): per object
and frame, the region similarity J (IoU; 1 when both masks are empty) and the contour accuracy F
(boundary precision/recall F-measure with a tolerance of ``ceil(0.008 x image diagonal)`` pixels),
the first and last frames left out; J and F are averaged per object, then over all objects of
all sequences, and J&F is their mean.

**Keypoints** (JHMDB's pose propagation as the same line of work reports it): each keypoint visible
in the first frame becomes a Gaussian heat map on the grid, the maps are propagated as the masks
are, and a keypoint is then where its map, resized to the frame, peaks; PCK@α is the share of the
later frames' visible true keypoints within α times the keypoint's scale (its object's size) of
the prediction (α = 0.1 and 0.2).

**Time-contrastive measures** on held-out videos: the temporal-order τ (per video, Kendall's τ-b
between the time gap ``|t_i - t_j|`` and the feature distance of every pair of frames, averaged
over videos: 1 when the features order frames as time does) and same-video retrieval (the share of
frames whose nearest other frame, by cosine similarity, is of the same video; and the mean time gap
to it when it is).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

PROPAGATION_PROTOCOL = ("the first frame's instance masks propagated through each held-out video by feature affinity "
                        "(Jabri et al. 2020's protocol: top-{topk} key pixels, temperature {temperature}, the first "
                        "frame plus the {context} previous predicted frames within a radius of {radius} grid cells); "
                        "J (IoU) and F (boundary F-measure, tolerance ceil(0.008 x diagonal) px) per object and frame "
                        "as DAVIS-2017 computes them (void pixels left out), first and last frames left out, averaged "
                        "per object then over all objects; J&F their mean. On the centred square of each frame at "
                        "data.size, not DAVIS's full frames: not comparable with published J&F")
TEMPORAL_PROTOCOL = ("held-out videos: temporal-order tau is, per video, Kendall's tau-b between the time gap and the "
                     "cosine distance of frozen features over every pair of frames, averaged over videos (1: the "
                     "features order frames as time does); same_video@1 is the share of frames whose nearest other "
                     "frame (cosine) is of the same video, mean_gap the mean time gap to it when it is")
ALIGNMENT_PROTOCOL = ("synchronised views of a scene (videos <scene>_view<k>): each frame of one view is matched to "
                      "the frame of another view of the same scene with the nearest frozen feature (cosine); "
                      "alignment_tau is Kendall's tau-b between the frames' times and their matches' times (as XIRL "
                      "reports alignment), alignment_error the mean |time - matched time| over the view's length "
                      "(TCN's alignment error), both averaged over every ordered pair of views of every scene")
TASK_ALIGNMENT_PROTOCOL = ("demonstrations of a task (tasks.csv; not synchronised, each at its own pace): the same "
                           "matching between every ordered pair of held-out videos of a task; task_alignment_tau is "
                           "Kendall's tau-b of the frames' times and their matches' times (XIRL's alignment measure), "
                           "task_alignment_error the mean |phase - matched phase|, a frame's phase its time over its "
                           "own video's length (demonstrations of different lengths compared by progress, not by "
                           "frame number)")


# ----------------------------------------------------------------------------- DAVIS-2017 J and F


VOID = 255
"""DAVIS's void label: its pixels count for no object (read as background) and are left out of J and F."""


def region_similarity(truth: Tensor, prediction: Tensor, void: Tensor | None = None) -> Tensor:
    """J per frame: IoU of boolean masks ``(..., H, W)``; 1 where both are empty (DAVIS ``db_eval_iou``);
    ``void`` pixels (a boolean mask of the same shape) are left out of both.

    Examples:
        >>> a = torch.zeros(1, 4, 4, dtype=torch.bool); a[0, :2] = True
        >>> b = torch.zeros(1, 4, 4, dtype=torch.bool); b[0, 1:3] = True
        >>> region_similarity(a, b).tolist()
        [0.3333333432674408]
    """
    truth, prediction = truth.bool(), prediction.bool()
    if void is not None:
        truth, prediction = truth & ~void, prediction & ~void
    inter = (truth & prediction).sum(dim=(-2, -1)).float()
    union = (truth | prediction).sum(dim=(-2, -1)).float()
    return torch.where(union == 0, torch.ones_like(union), inter / union.clamp(min=1))


def boundary_map(mask: Tensor) -> Tensor:
    """DAVIS's ``seg2bmap`` of boolean masks ``(..., H, W)``: a pixel is on the boundary when it differs
    from its right, lower or lower-right neighbour (the last row and column compare along the edge)."""
    seg = mask.bool()
    east, south, southeast = torch.zeros_like(seg), torch.zeros_like(seg), torch.zeros_like(seg)
    east[..., :, :-1] = seg[..., :, 1:]
    south[..., :-1, :] = seg[..., 1:, :]
    southeast[..., :-1, :-1] = seg[..., 1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ southeast)
    bmap[..., -1, :] = seg[..., -1, :] ^ east[..., -1, :]
    bmap[..., :, -1] = seg[..., :, -1] ^ south[..., :, -1]
    bmap[..., -1, -1] = False
    return bmap


def _dilate(bmap: Tensor, radius: int) -> Tensor:
    """Binary dilation of ``(N, H, W)`` maps by a disk of ``radius`` (skimage ``disk``: x² + y² <= r²)."""
    span = torch.arange(-radius, radius + 1, dtype=torch.float32)
    disk = ((span[:, None] ** 2 + span[None, :] ** 2) <= radius ** 2).float()[None, None]
    return F.conv2d(bmap.float()[:, None], disk, padding=radius)[:, 0] > 0


def contour_accuracy(truth: Tensor, prediction: Tensor, bound_th: float = 0.008, void: Tensor | None = None) -> Tensor:
    """F per frame of boolean masks ``(N, H, W)`` (DAVIS ``f_measure``): boundary precision and recall
    within ``ceil(bound_th * diagonal)`` pixels (or ``bound_th`` pixels if >= 1), F = 2PR / (P + R);
    1 when neither mask has a boundary, 0 when only one has. ``void`` pixels are cleared from both masks
    first, as DAVIS does."""
    truth, prediction = truth.bool(), prediction.bool()
    if void is not None:
        truth, prediction = truth & ~void, prediction & ~void
    h, w = truth.shape[-2:]
    radius = int(bound_th) if bound_th >= 1 else math.ceil(bound_th * math.hypot(h, w))
    fg, gt = boundary_map(prediction), boundary_map(truth)
    fg_match = (fg & _dilate(gt, radius)).sum(dim=(-2, -1)).float()
    gt_match = (gt & _dilate(fg, radius)).sum(dim=(-2, -1)).float()
    n_fg, n_gt = fg.sum(dim=(-2, -1)).float(), gt.sum(dim=(-2, -1)).float()
    precision = torch.where(n_fg == 0, torch.ones_like(n_fg), fg_match / n_fg.clamp(min=1))
    recall = torch.where(n_gt == 0, torch.ones_like(n_gt), gt_match / n_gt.clamp(min=1))
    f = torch.where(precision + recall == 0, torch.zeros_like(precision),
                    2 * precision * recall / (precision + recall).clamp(min=1e-12))
    f = torch.where((n_fg == 0) & (n_gt > 0), torch.zeros_like(f), f)
    return torch.where((n_fg > 0) & (n_gt == 0), torch.zeros_like(f), f)


def davis_scores(truth: Tensor, prediction: Tensor) -> dict[int, tuple[float, float]]:
    """Per object of the first ground-truth frame: (J mean, F mean) over the frames of one sequence,
    first and last left out (DAVIS-2017's semi-supervised rule; a sequence of 2 frames or fewer has none
    and gives no score); ``truth`` and ``prediction`` are ``(T, H, W)`` ids, the truth's :data:`VOID`
    pixels left out of both. The objects are the ids the first frame shows, which is DAVIS's 1 .. its
    largest id wherever the ids run without a gap; on frames cropped to their centred square (as selfsup
    reads them) an object cropped out of the first frame was never given, and is not scored."""
    if truth.shape != prediction.shape or truth.ndim != 3:
        raise ValueError(f"truth and prediction must be (T, H, W) of one shape, got {tuple(truth.shape)} and "
                         f"{tuple(prediction.shape)}")
    if truth.shape[0] <= 2:
        return {}
    void = truth[1:-1] == VOID
    shown = sorted(int(i) for i in truth[0].unique() if 0 < int(i) != VOID)
    scores = {}
    for obj in shown:
        gt, pred = truth[1:-1] == obj, prediction[1:-1] == obj
        scores[obj] = (float(region_similarity(gt, pred, void).mean()),
                       float(contour_accuracy(gt, pred, void=void).mean()))
    return scores


# ----------------------------------------------------------------------------- propagation


def _neighbourhood(h: int, w: int, radius: float, device) -> Tensor:
    """``(h*w, h*w)`` additive mask: 0 where two grid cells are closer than ``radius``, else -1e10."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    cells = torch.stack([ys.flatten(), xs.flatten()], 1).float()
    near = torch.cdist(cells, cells) < radius
    return torch.where(near, 0.0, -1e10)


def propagate_labels(features: Tensor, first_labels: Tensor, *, topk: int = 10, radius: float = 12,
                     context: int = 20, temperature: float = 0.05) -> Tensor:
    """Soft labels of frame 0 carried through a video by feature affinity (the module docstring's protocol).

    Args:
        features: ``(T, D, h, w)`` per-pixel features of the video's frames (normalised here).
        first_labels: ``(K, h, w)`` soft labels of frame 0 at the feature grid (instance one-hots,
            keypoint heat maps).
        topk, radius, context, temperature: the protocol's constants (videowalk's DAVIS settings).

    Returns:
        ``(T, K, h, w)`` labels of every frame (frame 0's as given).
    """
    t_count, _, h, w = features.shape
    feats = F.normalize(features.float(), dim=1).flatten(2)  # (T, D, hw)
    labels = [first_labels.float().flatten(1)]  # (K, hw)
    local = _neighbourhood(h, w, radius, feats.device)
    for t in range(1, t_count):
        previous = [max(0, t - k) for k in range(context, 0, -1)]  # frame-0 copies while t < context
        keys = torch.stack([feats[0]] + [feats[p] for p in previous])  # (1 + context, D, hw)
        key_labels = torch.stack([labels[0]] + [labels[p] for p in previous])  # (1 + context, K, hw)
        affinity = torch.einsum("fdk,dq->fkq", keys, feats[t])  # (frames, key hw, query hw)
        affinity[1:] += local
        affinity = (affinity / temperature).flatten(0, 1)  # (frames * hw, hw)
        weights, index = affinity.topk(min(topk, affinity.shape[0]), dim=0)
        weights = weights.softmax(dim=0)  # (topk, hw)
        flat_labels = key_labels.permute(1, 0, 2).flatten(1)  # (K, frames * hw)
        labels.append((flat_labels[:, index] * weights[None]).sum(dim=1))  # (K, hw)
    return torch.stack(labels).view(t_count, -1, h, w)


def propagate_masks(features: Tensor, first_mask: Tensor, *, topk: int = 10, radius: float = 12,
                    context: int = 20, temperature: float = 0.05) -> Tensor:
    """The first frame's instance ids carried through a video (:func:`propagate_labels` of their
    one-hot maps resized to the grid, each pixel taking the argmax of its labels resized back).

    Args:
        features: ``(T, D, h, w)`` per-pixel features of the video's frames.
        first_mask: ``(H, W)`` int ids of frame 0 (0: background).

    Returns:
        ``(T, H, W)`` int64 predicted ids (frame 0 is ``first_mask``).
    """
    h, w = features.shape[-2:]
    ids = torch.unique(first_mask)
    onehot = (first_mask[None] == ids[:, None, None]).float()[None]  # (1, K, H, W)
    first = F.interpolate(onehot, size=(h, w), mode="bilinear", align_corners=False)[0]
    labels = propagate_labels(features, first, topk=topk, radius=radius, context=context, temperature=temperature)
    out = [first_mask.long()]
    for frame in labels[1:]:  # one frame at a time: full-size labels of a whole video can be large
        full = F.interpolate(frame[None], size=tuple(first_mask.shape), mode="bilinear", align_corners=False)[0]
        out.append(ids[full.argmax(dim=0)].long())
    return torch.stack(out)


def keypoint_maps(points: Tensor, image_size: tuple[int, int], grid: tuple[int, int], sigma: float = 0.5) -> Tensor:
    """``(K, h, w)`` heat maps of ``K`` points ``(x, y)`` in pixels of an ``image_size`` = (H, W) frame
    on a ``grid`` = (h, w): a Gaussian of ``sigma`` grid cells about each point, summing to 1."""
    (height, width), (h, w) = image_size, grid
    cy = (torch.arange(h, dtype=torch.float32) + 0.5) * height / h  # grid cell centres in pixels
    cx = (torch.arange(w, dtype=torch.float32) + 0.5) * width / w
    dy = (cy[None, :] - points[:, 1:2].float()) * h / height  # (K, h) distances in cells
    dx = (cx[None, :] - points[:, 0:1].float()) * w / width
    maps = torch.exp(-(dy[:, :, None] ** 2 + dx[:, None, :] ** 2) / (2 * sigma ** 2))
    return maps / maps.sum(dim=(1, 2), keepdim=True).clamp(min=1e-12)


def propagate_keypoints(features: Tensor, first_points: Tensor, image_size: tuple[int, int], *, sigma: float = 0.5,
                        topk: int = 10, radius: float = 12, context: int = 20, temperature: float = 0.05) -> Tensor:
    """Frame 0's keypoints carried through a video: their heat maps (:func:`keypoint_maps`) propagated
    by :func:`propagate_labels`, each point then where its map, resized to the frame (bilinear), peaks.

    Returns:
        ``(T, K, 2)`` float ``(x, y)`` pixel positions (frame 0's as given); a pixel's position is its centre.
    """
    grid = tuple(features.shape[-2:])
    first = keypoint_maps(first_points, image_size, grid, sigma)
    labels = propagate_labels(features, first, topk=topk, radius=radius, context=context, temperature=temperature)
    peak = torch.stack([F.interpolate(frame[None], size=image_size, mode="bilinear", align_corners=False)[0]
                        .flatten(1).argmax(dim=1) for frame in labels[1:]])  # (T - 1, K) flat pixel index
    later = torch.stack([peak % image_size[1], peak // image_size[1]], dim=2).float() + 0.5
    return torch.cat([first_points[None, :, :2].float(), later])


def person_scale(truth: Tensor) -> Tensor:
    """``(T, 1)`` the JHMDB normaliser of CRW's and UVC's ``eval_pck.py``: per frame, 0.6 x the diagonal of
    the box around its visible true points (``truth`` ``(T, K, 3)``; inf for a frame with none)."""
    visible = truth[:, :, 2:3] > 0
    low = torch.where(visible, truth[:, :, :2], torch.inf).amin(dim=1)
    high = torch.where(visible, truth[:, :, :2], -torch.inf).amax(dim=1)
    diagonal = (high - low).norm(dim=1, keepdim=True)
    return torch.where(visible.any(dim=1), 0.6 * diagonal, torch.inf)


def pck(predicted: Tensor, truth: Tensor, scale: Tensor | None, alpha: float) -> tuple[int, int]:
    """(hits, counted): visible true points (``truth[..., 2] > 0``) of frames 1.. whose prediction lies
    within ``alpha`` x their scale of them, as JHMDB's PCK counts. ``scale``: ``(K,)`` pixels per point (a
    keypoint file's own), ``(T, K)`` or ``(T, 1)`` per frame, or None for :func:`person_scale`, CRW's."""
    scale = person_scale(truth) if scale is None else scale
    scale = scale[None] if scale.ndim == 1 else scale[1:]
    visible = truth[1:, :, 2] > 0
    distance = (predicted[1:, :, :2] - truth[1:, :, :2]).norm(dim=2)
    hits = (distance <= alpha * scale) & visible
    return int(hits.sum()), int(visible.sum())


def lab_features(frames: Tensor, grid: tuple[int, int]) -> Tensor:
    """The raw-pixel baseline's features: Lab colour averaged onto ``grid``, each channel standardised
    over the video (so cosine similarity compares colours, not brightness alone)."""
    from selfsup.augment import rgb_to_lab

    rgb = frames if frames.shape[1] == 3 else frames.expand(-1, 3, -1, -1)
    lab = F.adaptive_avg_pool2d(rgb_to_lab(rgb), grid)
    return (lab - lab.mean(dim=(0, 2, 3), keepdim=True)) / lab.std(dim=(0, 2, 3), keepdim=True).clamp(min=1e-6)


PCK_ALPHAS = (0.1, 0.2)
KEYPOINT_PROTOCOL = ("the first frame's visible keypoints propagated the same way as Gaussian heat maps (sigma "
                     "{sigma} grid cells), each then at the peak of its map upsampled to the frame (CRW takes a top-3 "
                     "weighted mean of grid cells instead); PCK@alpha: the share of later frames' "
                     "visible true keypoints within alpha x the scale of the prediction: the keypoint file's "
                     "scale, else per frame 0.6 x the diagonal of the box around its visible true keypoints, as "
                     "CRW's and UVC's JHMDB evaluation; pooled over every keypoint (the same as their mean over "
                     "joints when every joint is counted as often)")


def propagation_entry(video_set, dense: Callable[[Tensor], Tensor] | None, *, data: str, topk: int = 10,
                      radius: float = 12, context: int = 20, temperature: float = 0.05,
                      baseline: str | None = None, lab_stride: int = 4, keep: int = 0,
                      sigma: float = 0.5) -> dict[str, Any]:
    """J, F and J&F of propagating each held-out video's first masks, and PCK@0.1 / 0.2 of propagating
    its first keypoints when the videos have them (``video_set.keypoints``), as a results.json entry.

    ``dense`` maps uint8 frames ``(N, C, H, W)`` to ``(N, D, h, w)`` features; ``baseline`` instead
    scores ``"copy"`` (the first masks and keypoints for every frame) or ``"lab"`` (:func:`lab_features`
    on a grid of side / ``lab_stride``). ``keep``: return the first ``keep`` videos' predictions too
    (``"strips"``: (frames, truth, predicted) per video, of the videos with masks)."""
    keypoints = getattr(video_set, "keypoints", None) or {}
    if video_set.masks is None and not keypoints:
        raise ValueError(f"{data}: the held-out videos have neither instance masks (Annotations/<res>/<seq>/*.png) "
                         f"nor keypoints (Keypoints/<res>/<seq>.json) to propagate")
    if baseline not in (None, "copy", "lab") or (baseline is None and dense is None):
        raise ValueError(f"baseline must be None (with dense features), 'copy' or 'lab', got {baseline!r}")
    j_all, f_all, per_video, strips = [], [], {}, []
    hits = {alpha: [0, 0] for alpha in PCK_ALPHAS}
    for v, name in enumerate(video_set.names):
        rows = video_set.frames(v)
        frames = video_set.images[rows]
        truth = video_set.masks[rows].long() if video_set.masks is not None else None
        points = keypoints.get(v)
        feats = None
        if baseline == "lab":
            side = max(1, frames.shape[-1] // lab_stride)
            feats = lab_features(frames, (side, side)).cpu()
        elif baseline is None:
            feats = dense(frames).cpu()
        if truth is not None:
            first = truth[0].masked_fill(truth[0] == VOID, 0)  # void is no object to propagate
            predicted = (first[None].expand_as(truth) if feats is None else
                         propagate_masks(feats, first.cpu(), topk=topk, radius=radius, context=context,
                                         temperature=temperature))
            scores = davis_scores(truth.cpu(), predicted.cpu())
            j_all += [j for j, _ in scores.values()]
            f_all += [f for _, f in scores.values()]
            if scores:
                per_video[name] = {"j": float(np.mean([j for j, _ in scores.values()])),
                                   "f": float(np.mean([f for _, f in scores.values()]))}
            if len(strips) < keep:
                strips.append((frames.cpu(), truth.cpu(), predicted.cpu()))
        if points is not None:
            track, scale = points
            if feats is None:
                moved = track[:1, :, :2].expand(len(track), -1, -1)
            else:
                moved = propagate_keypoints(feats, track[0, :, :2], tuple(frames.shape[-2:]), sigma=sigma, topk=topk,
                                            radius=radius, context=context, temperature=temperature)
            seen = track[0, :, 2] > 0  # only what the first frame shows can be propagated
            # No scale in the file: CRW's per-frame person box, from every visible point of the frame
            scale = person_scale(track) if scale is None else scale[seen]
            for alpha in PCK_ALPHAS:
                hit, counted = pck(moved[:, seen], track[:, seen], scale, alpha)
                hits[alpha][0] += hit
                hits[alpha][1] += counted
    settings = {"topk": topk, "temperature": temperature, "context": context, "radius": radius}
    entry: dict[str, Any] = {"data": data}
    protocols = []
    if video_set.masks is not None:
        if not j_all:
            raise ValueError(f"{data}: no held-out video has an object in its first frame's mask")
        j, f = float(np.mean(j_all)), float(np.mean(f_all))
        entry.update({"j_and_f": (j + f) / 2, "j": j, "f": f, "objects": len(j_all), "videos": len(per_video),
                      "per_video": per_video})
        protocols.append("the first frame's masks copied to every frame (a baseline); J and F as DAVIS-2017"
                         if baseline == "copy" else PROPAGATION_PROTOCOL.format(**settings))
    if keypoints:
        counted = hits[PCK_ALPHAS[0]][1]
        if not counted:
            raise ValueError(f"{data}: no keypoint visible in a held-out video's first frame is visible later")
        entry.update({f"pck@{alpha}": hits[alpha][0] / counted for alpha in PCK_ALPHAS})
        entry["keypoints"] = counted
        protocols.append("the first frame's keypoints copied to every frame (a baseline); PCK as JHMDB"
                         if baseline == "copy" else KEYPOINT_PROTOCOL.format(sigma=sigma))
    if baseline == "lab":
        protocols.append("the features are the frames' Lab colours (a baseline)")
    entry["protocol"] = "; ".join(protocols)
    if keep:
        entry["strips"] = strips
    return entry


def propagation_baselines(video_set, *, data: str, lab_stride: int, topk: int = 10, radius: float = 12,
                          context: int = 20, temperature: float = 0.05) -> dict[str, dict[str, Any]]:
    """The baselines printed beside a network's propagation: ``copy`` (the first frame's masks and
    keypoints for every frame) and ``lab`` (raw Lab colours on a grid of side / ``lab_stride``, the
    network's grid), each with its J&F, J, F and PCK where the videos have them, and its protocol."""
    found = {}
    for baseline in ("copy", "lab"):
        entry = propagation_entry(video_set, None, data=data, baseline=baseline, topk=topk, radius=radius,
                                  context=context, temperature=temperature, lab_stride=lab_stride)
        found[baseline] = {key: entry[key] for key in ("j_and_f", "j", "f", "pck@0.1", "pck@0.2", "protocol")
                           if key in entry}
    return found


@torch.no_grad()
def dense_features(encoder: nn.Module, frames: Tensor, device=None, batch_size: int = 64) -> Tensor:
    """``encoder``'s ``(N, D, h, w)`` features of uint8 ``frames`` in eval mode, on ``device``, back on the CPU."""
    from selfsup.nn import eval_mode

    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    out = []
    with eval_mode(encoder):
        for start in range(0, len(frames), batch_size):
            batch = frames[start:start + batch_size].to(device).float() / 255
            out.append(encoder(batch).float().cpu())
    return torch.cat(out)


def plot_propagation(strips: list[tuple[Tensor, Tensor, Tensor]], path: str | Path, *, frames: int = 6,
                     title: str = "") -> Path:
    """``propagation.png``: for each video, ``frames`` evenly spaced frames, the true masks over them
    and the propagated ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from selfsup.data.synthetic_video import davis_palette

    palette = torch.tensor(davis_palette(), dtype=torch.float32).view(256, 3) / 255
    fig, axes = plt.subplots(2 * len(strips), frames, figsize=(1.6 * frames, 3.2 * len(strips)), squeeze=False)
    for row, (images, truth, predicted) in enumerate(strips):
        picks = np.linspace(0, len(images) - 1, frames).round().astype(int)
        for col, t in enumerate(picks):
            rgb = images[t].float() / 255
            rgb = rgb.expand(3, -1, -1) if rgb.shape[0] == 1 else rgb
            for k, (mask, label) in enumerate(((truth[t], "true"), (predicted[t], "propagated"))):
                colour = palette[mask.clamp(0, 255)].permute(2, 0, 1)
                shown = torch.where(mask[None] > 0, 0.45 * rgb + 0.55 * colour, rgb)
                ax = axes[2 * row + k, col]
                ax.imshow(shown.permute(1, 2, 0).numpy())
                ax.set_xticks([])
                ax.set_yticks([])
                if col == 0:
                    ax.set_ylabel(label, fontsize=8)
                if k == 0:
                    ax.set_title(f"t={t}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- time-contrastive


def temporal_order_tau(features: Tensor, video: Tensor, time: Tensor) -> float:
    """Per video, Kendall's τ-b between the time gaps and the cosine distances of all frame pairs
    (``scipy.stats.kendalltau``), averaged over videos with at least three frames."""
    from scipy.stats import kendalltau

    x = F.normalize(features.float(), dim=1)
    taus = []
    for v in torch.unique(video):
        rows = (video == v).nonzero().squeeze(1)
        if len(rows) < 3:
            continue
        order = time[rows].argsort()
        rows = rows[order]
        i, j = torch.triu_indices(len(rows), len(rows), offset=1)
        gap = (time[rows][i] - time[rows][j]).abs().numpy()
        distance = (1 - (x[rows][i] * x[rows][j]).sum(1)).numpy()
        tau = kendalltau(gap, distance).statistic
        if not np.isnan(tau):
            taus.append(tau)
    if not taus:
        raise ValueError("temporal_order_tau needs a video with at least three frames and varying features")
    return float(np.mean(taus))


def same_video_retrieval(features: Tensor, video: Tensor, time: Tensor) -> tuple[float, float]:
    """(share of frames whose nearest other frame by cosine is of the same video, mean time gap to it
    over those frames; NaN when none is)."""
    x = F.normalize(features.float(), dim=1)
    similarity = x @ x.T
    similarity.fill_diagonal_(float("-inf"))
    nearest = similarity.argmax(dim=1)
    same = video[nearest] == video
    gap = (time[nearest] - time).abs().float()
    return float(same.float().mean()), float(gap[same].mean()) if bool(same.any()) else float("nan")


def cross_view_alignment(features: Tensor, video: Tensor, time: Tensor, scenes: Tensor, *,
                         by_phase: bool = False) -> tuple[float, float, int]:
    """How well frozen features align synchronised views of one scene (Sermanet et al. 2018, sec. 5.1:
    each frame's nearest neighbour in the other view; Zakka et al. 2021 (XIRL): Kendall's τ of the
    matched times).

    Args:
        features: ``(N, D)`` per-frame features.
        video: ``(N,)`` each frame's video; ``time``: ``(N,)`` its time in the video.
        scenes: ``(V,)`` each video's scene (:attr:`selfsup.data.video.VideoSet.scenes`): videos of one
            scene are synchronised views, frame t of each showing the same moment.

    Returns:
        ``(alignment_tau, alignment_error, pairs)``: for every ordered pair (a, b) of views of a scene,
        Kendall's τ-b between the times of a's frames and the times of their nearest frames of b
        (cosine), and the mean ``|t - t_match| / len(a)``, each averaged over the ``pairs``; ``(nan,
        nan, 0)`` when no scene has two views. With ``by_phase`` (demonstrations of a task, each at its own
        pace and length) the error is the mean ``|t / len(a) - t_match / len(b)|``: two demonstrations at the
        same point of the task are at the same phase whatever their lengths (for views of one length, the
        same number).

    Where this differs from the official code, by choice: a pair whose matches all fall on one frame
    (τ undefined) counts τ = 0, where XIRL's ``nanmean`` leaves it out (a collapsed encoder recovers no
    order, and would otherwise be scored on its other pairs alone); both directions of a pair count,
    where TCN's ``compute_average_alignment`` takes each unordered pair once, one way (nearest-neighbour
    matching is not symmetric); the distance is cosine, where XIRL's default is squared Euclidean on
    unnormalised embeddings.
    """
    from scipy.stats import kendalltau

    x = F.normalize(features.float(), dim=1)
    taus, errors = [], []
    for scene in torch.unique(scenes):
        views = (scenes == scene).nonzero().squeeze(1).tolist()
        for a in views:
            for b in views:
                if a == b:
                    continue
                rows_a, rows_b = (video == a).nonzero().squeeze(1), (video == b).nonzero().squeeze(1)
                if len(rows_a) < 2 or len(rows_b) < 1:
                    continue
                matched = time[rows_b][(x[rows_a] @ x[rows_b].T).argmax(dim=1)]
                tau = kendalltau(time[rows_a].numpy(), matched.numpy()).statistic
                taus.append(0.0 if np.isnan(tau) else float(tau))  # every match one frame: no order recovered
                if by_phase:
                    gap = time[rows_a].double() / len(rows_a) - matched.double() / len(rows_b)
                    errors.append(float(gap.abs().mean()))
                else:
                    errors.append(float((time[rows_a] - matched).abs().float().mean()) / len(rows_a))
    if not taus:
        return float("nan"), float("nan"), 0
    return float(np.mean(taus)), float(np.mean(errors)), len(taus)


def temporal_entry(features: Tensor, video: Tensor, time: Tensor, *, data: str,
                   scenes: Tensor | None = None, tasks: Tensor | None = None) -> dict[str, Any]:
    """:func:`temporal_order_tau` and :func:`same_video_retrieval` as the results.json ``temporal`` entry,
    with :func:`cross_view_alignment` when ``scenes`` (each video's scene) holds synchronised views, and
    the same alignment between the demonstrations of a task (``task_alignment_tau``, ``_error``,
    ``task_pairs``: XIRL's measure, every ordered pair of held-out videos of a task) when ``tasks``
    (each video's task) is given."""
    share, gap = same_video_retrieval(features, video, time)
    entry = {"tau": temporal_order_tau(features, video, time), "same_video@1": share, "mean_gap": gap,
             "data": data, "protocol": TEMPORAL_PROTOCOL}
    if scenes is not None:
        tau, error, pairs = cross_view_alignment(features, video, time, scenes)
        if pairs:
            entry.update(alignment_tau=tau, alignment_error=error, view_pairs=pairs,
                         protocol=f"{TEMPORAL_PROTOCOL}; {ALIGNMENT_PROTOCOL}")
    if tasks is not None:
        tau, error, pairs = cross_view_alignment(features, video, time, tasks, by_phase=True)
        if pairs:
            entry.update(task_alignment_tau=tau, task_alignment_error=error, task_pairs=pairs,
                         protocol=f"{entry['protocol']}; {TASK_ALIGNMENT_PROTOCOL}")
    return entry


__all__ = ["ALIGNMENT_PROTOCOL", "PROPAGATION_PROTOCOL", "TASK_ALIGNMENT_PROTOCOL", "TEMPORAL_PROTOCOL", "boundary_map", "contour_accuracy",
           "cross_view_alignment", "davis_scores",
           "dense_features", "keypoint_maps", "lab_features", "pck", "plot_propagation", "propagate_keypoints",
           "propagate_labels", "propagate_masks", "propagation_entry",
           "propagation_baselines", "region_similarity", "same_video_retrieval", "temporal_entry", "temporal_order_tau"]
