"""Dense Object Nets (Florence, Manuelli, Tedrake 2018, "Dense Object Nets: Learning Dense Visual Object
Descriptors By and For Robotic Manipulation"; official code RobotLocomotion/pytorch-dense-correspondence)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from selfsup import augment, losses
from selfsup.augment import warps
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.nn import Backbone
from selfsup.nn.dense import DescriptorNet


def _as_float(images: Tensor, dtype: torch.dtype) -> Tensor:
    """uint8 images to ``dtype`` (the network's) in [0, 1]; floating ones kept in their own precision (float64
    where a test runs the method in it: A and B pass through the network apart, so each must match its weights)."""
    return images if images.is_floating_point() else augment.clip_to_float(images).to(dtype)


class DenseObjectNet(MethodBase):
    """Per-pixel descriptors trained by the pixelwise contrastive loss on known correspondences.

    Per batch::

        A = half_turn(A) with probability half_turn_p
        B, valid = warp(A, H)                      # a random homography per image (a half turn included),
        B = colour_change(B)                       # then brightness and contrast changed
        d_A, d_B = net(A), net(B)                  # (N, D, H, W) descriptors, each batch on its own
        for `matches` valid pixels p of B:         # their exact match in A: a = H^-1 p
            match pair (d_A(a), d_B(p))            # d_A read bilinearly at a
            `non_matches` pixels q of B more than `min_distance` pixels from p:
                non-match pair (d_A(a), d_B(q))
        loss = mean over pairs of pixelwise_contrastive(its matches, its non-matches, margin)

    The official code finds correspondences by 3-D reconstruction of a scene seen from several
    cameras; single images with known warps give exact ones, so the method trains on any image set.
    Image pairs with given correspondences (``data.name: pairs``, :mod:`selfsup.data.pairs`) train on
    those instead: ``matches`` of each pair's given matches are sampled, a read bilinearly in A and p
    in B, the non-matches as above.
    As in the official code (RobotLocomotion/pytorch-dense-correspondence, read for this method):

    - the loss is the official one with ``scale_by_hard_negatives``, each image pair's on its own
      (the official trains on one pair a step; ``normalise: pooled`` pools the batch's pairs into one
      match mean and one hard-negative count, this method's behaviour before 2026-12-08);
    - the pair's flips are rotations by 180 degrees (``correspondence_augmentation.py``): A and B each
      turned with probability 0.5, independently (``half_turn_p``: A's turn, and B's relative to A in
      the warp; single images only, a given pair is read as it is); a mirror flip (``flip_p``, off by
      default) would ask the descriptor of a point to equal that of its mirror image, which on a
      left-right symmetric object is the descriptor of the other side;
    - A and B go through the network separately (``training.py``), so BatchNorm normalises each batch
      by its own statistics (``joint_bn: true``: one pass, statistics of both together);
    - the descriptor head starts from N(0, 0.01) with zero biases (``head_std``), and weight decay
      reaches every parameter (``torch.optim.Adam(dcn.parameters(), weight_decay=...)``).

    Where it differs: the matches come from warps, not from 3-D reconstructions with object masks (nor is
    the background replaced by random textures, the official ``domain_randomize``, which needs the masks), so
    ``matches`` of B's valid pixels are drawn uniformly (the official draws them on the object's mask,
    thousands per pair) and the non-matches uniformly over B (the official: half on the mask, half on
    the background, each term with the same margin 0.5 by default, which is one pooled term). Non-matches
    within ``min_distance`` pixels of the match are left out, as the official sampler means to (its
    ``correspondence_finder.py`` builds the mask of near pixels from zeros, so it keeps them). The
    descriptor network reads every stage of the backbone (:class:`selfsup.nn.dense.DescriptorNet`), where
    the official one is an ImageNet-trained ResNet-34 with output stride 8 and one 1x1 head, upsampled
    with aligned corners (``upsample_bilinear``; here ``align_corners=False``, the convention of the
    pixel centres the matches are read at).

    Args:
        backbone: the encoder whose stages the descriptors read (its pooled features stay the
            evaluation encoder of the global evaluations).
        dim: descriptor dimension D (paper: 3 in most experiments).
        margin: the non-match margin M (0.5).
        matches: matches sampled per image pair.
        non_matches: non-matches per match (the official samples about 150).
        min_distance: a non-match lies more than this many pixels from the true match.
        rotation, scale, shear, shift, perspective, flip_p, half_turn_p: the warps
            (:func:`selfsup.augment.warps.random_homographies`).
        colour: the largest relative brightness and contrast change of the warped image.
        normalise: ``pair``: each image pair's loss on its own, averaged (official); ``pooled``: one
            loss over every pair's matches and non-matches.
        joint_bn: encode A and B in one pass (BatchNorm statistics over both; faster on small batches).
        head_std: the descriptor heads' initial weight std (official 0.01); None: PyTorch's default.
    """

    exclude_bias_norm = False  # the official Adam(dcn.parameters(), weight_decay=1e-4) decays every parameter

    augment_recipe = "none"
    views_needed: ClassVar[tuple[int, int | None]] = (1, 1)
    data_kinds: ClassVar[tuple[str, ...]] = ("images", "image_pairs")

    def __init__(self, backbone: Backbone, *, dim: int = 3, margin: float = 0.5, matches: int = 64,
                 non_matches: int = 150, min_distance: float = 2.0, rotation: float = 30.0,
                 scale: tuple[float, float] = (0.8, 1.2), shear: float = 10.0, shift: float = 0.1,
                 perspective: float = 0.1, flip_p: float = 0.0, half_turn_p: float = 0.5, colour: float = 0.3,
                 normalise: str = "pair", joint_bn: bool = False, head_std: float | None = 0.01) -> None:
        super().__init__()
        if matches < 1 or non_matches < 1 or margin <= 0 or min_distance < 0 or not 0 <= colour < 1:
            raise ValueError(f"need matches >= 1, non_matches >= 1, margin > 0, min_distance >= 0 and 0 <= colour "
                             f"< 1; got {matches}, {non_matches}, {margin}, {min_distance}, {colour}")
        if normalise not in ("pair", "pooled"):
            raise ValueError(f"normalise must be 'pair' or 'pooled', got {normalise!r}")
        self.backbone = backbone
        self.descriptors = DescriptorNet(backbone, dim, head_std=head_std)
        self.normalise, self.joint_bn = normalise, bool(joint_bn)
        self.margin, self.matches, self.non_matches, self.min_distance = margin, matches, non_matches, min_distance
        self.warp_args = {"rotation": rotation, "scale": tuple(scale), "shear": shear, "shift": shift,
                          "perspective": perspective, "flip_p": flip_p, "half_turn_p": half_turn_p}
        self.colour = colour

    def augmentation(self, image_size: int) -> augment.Augmentation:
        """The image itself: the method warps it (and must know how)."""
        return augment.recipe("none", image_size)

    def pair(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(warped, valid, H)``: each image warped by a random homography, its colours changed."""
        n = images.shape[0]
        homographies = warps.random_homographies(n, tuple(images.shape[-2:]), device=images.device,
                                                 **self.warp_args)
        warped, valid = warps.warp(images, homographies)
        brightness = 1 + self.colour * (2 * torch.rand(n, 1, 1, 1, device=images.device) - 1)
        contrast = 1 + self.colour * (2 * torch.rand(n, 1, 1, 1, device=images.device) - 1)
        mean = warped.mean(dim=(1, 2, 3), keepdim=True)
        warped = (((warped - mean) * contrast + mean) * brightness).clamp(0, 1)
        return warped, valid, homographies

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        dtype = next(self.backbone.parameters()).dtype
        images = _as_float(batch.views[0], dtype)  # image pairs arrive as uint8, views as float
        n, _, height, width = images.shape
        centres = warps.pixel_centres((height, width), images.device)
        if batch.extra is not None and "matches" in batch.extra:  # image pairs with given correspondences
            other = _as_float(batch.extra["b"], dtype)
            counts = batch.extra["counts"]
            slots = torch.arange(batch.extra["matches"].shape[1], device=images.device)
            weights = (slots[None] < counts[:, None]).float()
            picked = torch.multinomial(weights, self.matches, replacement=True)
            given = torch.gather(batch.extra["matches"], 1, picked[..., None].expand(-1, -1, 4))  # (n, M, 4)
            a, p = given[..., :2], given[..., 2:]
            keep = torch.ones(n, self.matches, dtype=torch.bool, device=images.device)
        else:  # single images: a known warp makes the pair, every pixel's match exact
            turn = torch.rand(n, device=images.device) < self.warp_args["half_turn_p"]  # A upside down too
            images = torch.where(turn[:, None, None, None], images.flip(-2, -1), images)
            other, valid, homographies = self.pair(images)
            weights = valid.view(n, -1).float()
            usable = weights.sum(dim=1) > 0
            weights[~usable] = 1.0  # an image warped entirely outside itself: sampled, then dropped
            p = centres[torch.multinomial(weights, self.matches, replacement=True)]  # (n, M, 2) pixels of B
            a = warps.map_points(torch.linalg.inv(homographies), p.double()).float()
            keep = usable[:, None].expand(-1, self.matches)
        if self.joint_bn:
            d_a, d_b = self.descriptors(torch.cat((images, other))).chunk(2)
        else:
            d_a, d_b = self.descriptors(images), self.descriptors(other)
        flat_b = d_b.flatten(2).transpose(1, 2)  # (n, H*W, D)
        at_a = warps.sample_at(d_a, a)  # (n, M, D), bilinear at the exact matches
        match_a, match_b = at_a[keep], warps.sample_at(d_b, p)[keep]
        q = torch.randint(height * width, (n, self.matches, self.non_matches), device=images.device)
        far = (centres[q] - p[:, :, None]).norm(dim=-1) > self.min_distance
        far &= keep[..., None]
        non_a = at_a[:, :, None].expand(-1, -1, self.non_matches, -1)[far]
        non_b = torch.gather(flat_b, 1, q.view(n, -1, 1).expand(-1, -1, flat_b.shape[-1])).view(
            n, self.matches, self.non_matches, -1)[far]
        pairs = {}
        if self.normalise == "pair":
            index = torch.arange(n, device=images.device)
            pairs = {"match_pair": index[:, None].expand(-1, self.matches)[keep],
                     "non_match_pair": index[:, None, None].expand(-1, self.matches, self.non_matches)[far]}
        loss = losses.pixelwise_contrastive(match_a, match_b, non_a, non_b, self.margin, **pairs)
        with torch.no_grad():
            match_distance = (match_a - match_b).norm(dim=1).mean()
        return {"loss": loss, "match_distance": match_distance}

    def descriptor_encoder(self) -> DescriptorNet:
        """Images to per-pixel descriptors, for ``selfsup evaluate correspondence``."""
        return self.descriptors

    def extra_evaluations(self, test, *, data: str, device=None) -> dict:
        """PCK@1/3/5 of dense correspondence under known warps (:mod:`selfsup.evaluate.correspondence`),
        beside raw-pixel patches; the engine adds the random-initialisation floor."""
        from selfsup.evaluate.correspondence import dense_evaluations

        return dense_evaluations(self, test, data=data, device=device)
