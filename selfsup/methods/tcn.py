"""Time-Contrastive Networks (Sermanet et al. 2018, "Time-Contrastive Networks: Self-Supervised Learning
from Video"; official code tensorflow/models research/tcn)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import augment, data, losses
from selfsup.methods.base import Batch, Progress, VideoMethodBase
from selfsup.nn import Backbone


class TCN(VideoMethodBase):
    """Single-view TCN: frames near in time attract, frames far in time in the same video repel.

    Per batch of B clips of ``frames`` consecutive frames (``stride`` apart)::

        e = normalize(W f(x))                           # (B * frames, D) frame embeddings
        loss = time_contrastive_triplet(e, t, video,    # positives: same video, |Δt| <= pos_radius
                                        pos_radius, neg_radius, margin,   # negatives: same video,
                                        across_sequences=False)           # |Δt| > neg_radius

    As the official ``SVTCNTripletEstimator`` (``svtcn_estimator.py``), which calls
    ``singleview_tcn_loss`` without ``multiseq``: its batch is one sequence, so time alone decides the
    negatives. Here a batch holds clips of several videos; each frame's negatives are its own video's
    frames beyond ``neg_radius``, and other videos' frames are neither (``across_videos`` makes them
    negatives, the loss's ``multiseq`` rule). Semi-hard triplets on squared distances of
    L2-normalised embeddings, margin 0.2. The embedder is a linear
    layer to ``dim`` on the backbone's pooled features, where the official adds two conv layers and a
    spatial softmax to an Inception trunk.

    ``multi_view=True`` is the paper's multi-view TCN (its main form): each clip is read at the same
    times from two synchronised views of its scene (videos named ``<scene>_view<k>``, see
    :mod:`selfsup.data.video`; ``benchmarks/make_videos.py --views 2`` writes such data), and the
    loss is :func:`selfsup.losses.multi_view_time_contrastive` — the same moment in the other view is
    the positive, every other moment of the scene and every other scene a negative (the official
    ``mvtcn_estimator``: semi-hard triplets over timestep labels). A video without another view is
    paired with itself: its frames are then no one's positive (the same frame twice would be a
    positive at distance 0), only negatives of the others.

    Args:
        backbone: the frame encoder.
        dim: embedding size (official 32).
        frames: frames per clip (default 36, the official single-view batch: one window of 36 frames).
            Within one video a frame has negatives only where the clip spans more than ``neg_radius``:
            a clip too short for its radii is refused.
        stride: frames between a clip's frames.
        pos_radius, neg_radius: in frames of the video (official 6 and 12 at about 30 fps).
        margin: triplet margin on squared distances (official 0.2).
        crop_scale: clip-consistent random resized crop area range, with a colour jitter (brightness,
            contrast, saturation 0.4, hue 0.1, probability 0.8) the same for every frame of a clip, never
            flipped (None: no augmentation). Our choice: the official ``preprocess_training_image``
            distorts each frame's colour on its own (brightness up to 32/255, saturation 0.5-1.5) and its
            pouring config adds scale augmentation, no flip; one crop and one colour change per clip keep a
            clip's frames comparable.
        multi_view: the multi-view objective on pairs of synchronised views (``pos_radius`` and
            ``neg_radius`` are then unused: the official multi-view loss has no radii). Batches differ from
            the official's: here clips of consecutive frames from several scenes, each other scene's frames
            negatives too; the official pouring config fills a batch from one sequence (16 random timesteps
            of a 580-frame window).
        loss: the multi-view loss, as the official ``mvtcn_estimator`` offers it: ``triplet``
            (``MVTCNTripletEstimator``, above) or ``npairs`` (``MVTCNNpairsEstimator``): each frame of the
            first view an anchor whose positive is the same moment in the other view, the other pairs'
            positives its negatives (:func:`selfsup.losses.n_pair` with ``same_class="soft"``, TF's
            ``npairs_loss``: pairs of one scene and time share a class, the target spread over them; a
            video paired with itself gives no pair), on embeddings that are not normalised (the official config's ``npairs.embedding_l2:
            false``), plus TF ``npairs_loss``'s norm penalty ``0.25 * l2_reg * (mean |a|^2 + mean |p|^2)``.
        l2_reg: λ of that penalty (TF's default 0.002).
        across_videos: whether the batch's other videos' frames are negatives. ``None`` (default): the
            official single-view estimator's ``False`` (above); multi-view ``True``, every other scene
            of the batch a negative (:func:`selfsup.losses.multi_view_time_contrastive`). Single-view
            ``True`` is ``singleview_tcn_loss``'s ``multiseq=True``, this class's default until
            2026-12-06: on demonstrations of one task it does not align them beyond the random network,
            where the official ``False`` does (``studies/tcn_task.yaml``: other demonstrations' frames at
            the same stage of the task, which alignment asks to be near, are pushed away).
    """

    def __init__(self, backbone: Backbone, *, dim: int = 32, frames: int = 36, stride: int = 1,
                 pos_radius: float = 6, neg_radius: float = 12, margin: float = 0.2,
                 crop_scale: tuple[float, float] | None = (0.6, 1.0), multi_view: bool = False,
                 loss: str = "triplet", l2_reg: float = 0.002, across_videos: bool | None = None) -> None:
        super().__init__()
        if loss not in ("triplet", "npairs"):
            raise ValueError(f"loss must be 'triplet' or 'npairs', got {loss!r}")
        if loss == "npairs" and not multi_view:
            raise ValueError("loss='npairs' is the multi-view objective (the official single-view TCN has the "
                             "triplet loss only): set multi_view=True")
        if not l2_reg >= 0:
            raise ValueError(f"l2_reg must be >= 0, got {l2_reg}")
        self.loss, self.l2_reg = loss, l2_reg
        if multi_view and across_videos is False:
            raise ValueError("across_videos=False is single-view only: the multi-view losses here take every other "
                             "scene of the batch as a negative")
        self.across_videos = multi_view if across_videos is None else bool(across_videos)
        if frames < 2 or stride < 1 or not 0 <= pos_radius < neg_radius:
            raise ValueError(f"need frames >= 2, stride >= 1 and 0 <= pos_radius < neg_radius; got {frames}, "
                             f"{stride}, {pos_radius}, {neg_radius}")
        if not multi_view and not self.across_videos and (frames - 1) * stride <= neg_radius:
            raise ValueError(f"a clip of {frames} frames {stride} apart spans {(frames - 1) * stride} frames, not more "
                             f"than neg_radius={neg_radius}: no frame would have a negative (its loss only pulls "
                             f"positives together); take more frames, a smaller neg_radius or across_videos=True")
        self.backbone = backbone
        self.embedder = nn.Linear(backbone.out_dim, dim)
        self.frames, self.stride = frames, stride
        self.pos_radius, self.neg_radius, self.margin = pos_radius, neg_radius, margin
        self.crop_scale = None if crop_scale is None else tuple(crop_scale)
        self.multi_view = multi_view
        self.clip_views = 2 if multi_view else 1

    def clip_times(self, lengths: Tensor, generator: torch.Generator) -> Tensor:
        return data.video.window_times(self.frames, self.stride)(lengths, generator)

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        clips = batch.views[0]
        b, k = clips.shape[:2]
        views = (augment.clip_views(clips, scale=self.crop_scale, flip_p=0.0) if self.crop_scale is not None
                 else augment.clip_to_float(clips))
        raw = self.embedder(self.backbone(views.flatten(0, 1)))
        times = batch.extra["times"].flatten()
        if self.loss == "npairs":  # frames (b, 2 * half): the first half of each clip one view, the rest the other
            half = k // 2
            paired = batch.extra["partner"] != batch.extra["video"]  # a video alone is its own partner: no pair
            if not bool(paired.any()):
                return {"loss": raw.sum() * 0.0}
            pairs = raw.view(b, 2, half, -1)[paired]
            anchor, positive = pairs[:, 0].flatten(0, 1), pairs[:, 1].flatten(0, 1)
            moments = (batch.extra["scene"][paired].repeat_interleave(half) * (int(times.max()) + 1)
                       + times.view(b, 2, half)[paired][:, 0].flatten())
            penalty = 0.25 * self.l2_reg * (anchor.square().sum(1).mean() + positive.square().sum(1).mean())
            return {"loss": losses.n_pair(anchor, positive, labels=moments, same_class="soft") + penalty}
        embeddings = F.normalize(raw, dim=1)
        if self.multi_view:  # the first k // 2 frames of a clip are one view, the rest the other view's
            scenes = batch.extra["scene"].repeat_interleave(k)
            views = torch.stack([batch.extra["video"], batch.extra["partner"]], dim=1).repeat_interleave(k // 2, dim=1)
            return {"loss": losses.multi_view_time_contrastive(embeddings, times, scenes, margin=self.margin,
                                                               views=views.flatten())}
        videos = batch.extra["video"].repeat_interleave(k)
        loss = losses.time_contrastive_triplet(embeddings, times, videos, pos_radius=self.pos_radius,
                                               neg_radius=self.neg_radius, margin=self.margin,
                                               across_sequences=self.across_videos)
        return {"loss": loss}
