"""DenseCL (Wang et al. 2021, "Dense Contrastive Learning for Self-Supervised Visual Pre-Training";
official code WXinlong/DenseCL, ``openselfsup/models/densecl.py``)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import distributed, losses
from selfsup.augment.geometry import image_to_view, view_to_image
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.nn import Backbone, KeyQueue, check_momentum, feature_map, frozen_copy, momentum_update, shuffled_forward
from selfsup.nn import split_batchnorm
from selfsup.nn.dense import UpsampledFeatures


class DenseCLNeck(nn.Module):
    """The official ``DenseCLNeck``: a global MLP (fc-ReLU-fc) on the pooled feature map and a dense
    one (1x1 conv-ReLU-1x1 conv) on every position, plus the pooled dense output. Initialised as the
    official ``init_weights(init_linear='kaiming')``: the Linears Kaiming-normal (fan in, ReLU) with zero
    biases, the convolutions PyTorch's default."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
        self.mlp2 = nn.Sequential(nn.Conv2d(in_dim, hidden_dim, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden_dim, out_dim, 1))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def forward(self, fmap: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(global (N, D), dense grid (N, D, S*S), pooled dense (N, D))``."""
        pooled = self.mlp(fmap.mean(dim=(2, 3)))
        grid = self.mlp2(fmap)
        return pooled, grid.flatten(2), grid.mean(dim=(2, 3))


class _DenseEncoder(nn.Module):
    """Backbone and neck, every output L2-normalised and packed in one row per image (so the key
    encoder runs through shuffle-BN like any other): global, pooled dense, dense grid, backbone grid."""

    def __init__(self, backbone: Backbone, neck: DenseCLNeck) -> None:
        super().__init__()
        self.backbone, self.neck = backbone, neck

    def forward(self, images: Tensor) -> Tensor:
        fmap = feature_map(self.backbone, images)
        self.grid_shape = tuple(fmap.shape[-2:])  # for matching positions by the views' geometry
        pooled, grid, pooled_dense = self.neck(fmap)
        parts = [F.normalize(pooled, dim=1), F.normalize(pooled_dense, dim=1), F.normalize(grid, dim=1),
                 F.normalize(fmap.flatten(2), dim=1)]
        return torch.cat([p.flatten(1) for p in parts], dim=1)


def unpack(packed: Tensor, dim: int, channels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The parts of :class:`_DenseEncoder`'s rows: ``(q (N, D), q2 (N, D), grid (N, D, S2), fmap (N, C, S2))``."""
    n, total = packed.shape
    positions = (total - 2 * dim) // (dim + channels)
    q, q2 = packed[:, :dim], packed[:, dim:2 * dim]
    grid = packed[:, 2 * dim:2 * dim + dim * positions].view(n, dim, positions)
    fmap = packed[:, 2 * dim + dim * positions:].view(n, channels, positions)
    return q, q2, grid, fmap


def geometric_matches(boxes: Tensor, flips: Tensor, sizes: tuple[tuple[int, int], tuple[int, int]],
                      grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Each query position's key position by where the two views came from (PixPro's and VADeR's
    positives, not DenseCL's): the centre of query cell ``i`` of the ``grid`` is carried from the
    query view into the image (:func:`~selfsup.augment.geometry.view_to_image`) and on into the key
    view; its match is the key cell it falls in, valid where the key view shows that point.

    Args:
        boxes: ``(N, 2, 4)`` ``(top, left, height, width)`` of the query and key views in the image.
        flips: ``(N, 2)`` bool, True where a view is mirrored.
        sizes: the query and key views' ``(height, width)``.
        grid: the feature grid's ``(rows, columns)``, the same for both views.

    Returns:
        ``(match (N, rows*columns) int64, valid (N, rows*columns) bool)``, positions in row-major order.
    """
    rows, cols = grid
    device = boxes.device
    r = (torch.arange(rows, device=device, dtype=torch.float32) + 0.5) * (sizes[0][0] / rows)
    c = (torch.arange(cols, device=device, dtype=torch.float32) + 0.5) * (sizes[0][1] / cols)
    centres = torch.stack(torch.meshgrid(r, c, indexing="ij"), dim=2).view(1, -1, 2).expand(boxes.shape[0], -1, 2)
    in_image = view_to_image(centres, boxes[:, 0], flips[:, 0], sizes[0])
    in_key = image_to_view(in_image, boxes[:, 1], flips[:, 1], sizes[1])
    y, x = in_key.unbind(2)
    valid = (y >= 0) & (y < sizes[1][0]) & (x >= 0) & (x < sizes[1][1])
    key_row = (y * (rows / sizes[1][0])).floor().clamp(0, rows - 1).long()
    key_col = (x * (cols / sizes[1][1])).floor().clamp(0, cols - 1).long()
    return key_row * cols + key_col, valid


class DenseCL(MethodBase):
    """MoCo v2 with a second, dense contrastive task between the feature maps of the two views.

    Per batch (the official ``forward_train``)::

        q, q_grid, q2, q_b = f_q(x_q)            # global, dense grid (S*S positions), pooled dense,
        k, k_grid, k2, k_b = f_k(x_k)            # backbone grid; all L2-normalised; keys: shuffle-BN
        global = info_nce(q, k, negatives=queue, τ)
        j(i)   = argmax_j q_b[:, i] · k_b[:, j]  # each query position's match: the most similar
                                                 # key position of the backbone features
        dense  = info_nce(q_grid[:, i], k_grid[:, j(i)], negatives=queue2, τ)   # every position
        loss   = (1 - λ) global + λ dense        # λ = 0 for the first warmup_steps steps
        enqueue k -> queue, k2 -> queue2          # every rank's

    Defaults are the official ImageNet config's: queue 65536, momentum 0.999, τ 0.2, λ 0.5 after
    10,000 steps of λ = 0 (the paper's warm-up as ``DenseCLWarmupHook``, whose own default is 1,000; the
    released configs leave the hook off, and the maintainer gives ``start_iters=10000``, 1% of the
    ImageNet run, in WXinlong/DenseCL issue 16), the neck's hidden width the backbone's channels, output 128,
    MoCo v2's augmentation, shuffle-BN. The key encoder's momentum update follows
    :class:`~selfsup.methods.MoCo` (after each optimiser step, the official's before each key pass:
    the same sequence of updates).

    Args:
        backbone: encoder with a readable feature map (:func:`selfsup.nn.feature_map`).
        proj_hidden_dim: the neck's hidden width (None: the feature map's channels).
        proj_dim: D (128).
        queue_size, momentum, temperature: as MoCo v2 (65536, 0.999, 0.2).
        loss_lambda: λ, the dense loss's weight (0.5).
        warmup_steps: steps with λ = 0 (10,000; 0 is the released configs' λ 0.5 from the start).
        shuffle_bn, shuffle_splits: as :class:`~selfsup.methods.MoCo`.
        match: how a query position finds its key position. ``"features"`` (the official): the key
            position most similar in backbone features. ``"geometry"``: the key position showing the
            same point of the image, from the views' crop boxes and flips
            (:func:`geometric_matches`; PixPro's and VADeR's positives), query positions the key view
            does not show left out of the dense loss. Our option, not the paper's: at the start of
            training the most similar features are those of a random network, and on the small grids
            of small images (3x3 at 28 pixels) the official matches never taught the positions to
            correspond (docs/results/views_and_dense.md).
    """

    augment_recipe = "moco_v2"
    exclude_bias_norm = False  # WXinlong/DenseCL openselfsup/apis/train.py build_optimizer: no paramwise_options in the configs, SGD(model.parameters(), weight_decay=...) decays every parameter
    sync_batchnorm_exclude = ("key_encoder",)
    curves = ("loss_global", "loss_dense")

    def __init__(self, backbone: Backbone, *, proj_hidden_dim: int | None = None, proj_dim: int = 128,
                 queue_size: int = 65536, momentum: float = 0.999, temperature: float = 0.2,
                 loss_lambda: float = 0.5, warmup_steps: int = 10_000, shuffle_bn: bool = True,
                 shuffle_splits: int = 8, match: str = "features") -> None:
        super().__init__()
        check_momentum("momentum", momentum)
        if match not in ("features", "geometry"):
            raise ValueError(f"match must be 'features' or 'geometry', got {match!r}")
        self.match, self.view_geometry = match, match == "geometry"
        if temperature <= 0 or not 0 <= loss_lambda <= 1 or warmup_steps < 0:
            raise ValueError(f"need temperature > 0, 0 <= loss_lambda <= 1 and warmup_steps >= 0; got {temperature}, "
                             f"{loss_lambda}, {warmup_steps}")
        self.backbone = backbone
        channels = backbone.out_dim
        self.neck = DenseCLNeck(channels, channels if proj_hidden_dim is None else proj_hidden_dim, proj_dim)
        if shuffle_bn:
            split_batchnorm(backbone, shuffle_splits)
        self.encoder = _DenseEncoder(backbone, self.neck)
        self.key_encoder = frozen_copy(self.encoder)
        self.queue, self.queue2 = KeyQueue(queue_size, proj_dim), KeyQueue(queue_size, proj_dim)
        self.momentum, self.temperature = momentum, temperature
        self.loss_lambda, self.warmup_steps = loss_lambda, warmup_steps
        self.shuffle_bn, self.proj_dim, self.channels = shuffle_bn, proj_dim, channels

    def lambda_at(self, progress: Progress) -> float:
        """λ at this step: 0 during the warm-up, then ``loss_lambda``."""
        return 0.0 if progress.step < self.warmup_steps else self.loss_lambda

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        if progress.step == 0 and self.loss_lambda > 0 and self.warmup_steps >= progress.max_steps:
            warnings.warn(f"DenseCL: warmup_steps={self.warmup_steps} covers the whole run of {progress.max_steps} "
                          f"steps, so the dense loss never turns on; lower method_args.warmup_steps", stacklevel=2)
        x_q, x_k = batch.views
        q, _, q_grid, q_b = unpack(self.encoder(x_q), self.proj_dim, self.channels)
        grid = self.encoder.grid_shape
        with torch.no_grad():
            packed = shuffled_forward(self.key_encoder, x_k) if self.shuffle_bn else self.key_encoder(x_k)
            k, k2, k_grid, k_b = unpack(packed.float(), self.proj_dim, self.channels)
            if self.view_geometry:
                if batch.extra is None or "view_boxes" not in batch.extra:
                    raise ValueError("DenseCL match='geometry' needs the views' boxes in batch.extra['view_boxes'] "
                                     "and ['view_flips'] (the engine adds them; see Augmentation.views_and_geometry)")
                match, valid = geometric_matches(batch.extra["view_boxes"][:, :2], batch.extra["view_flips"][:, :2],
                                                 (tuple(x_q.shape[-2:]), tuple(x_k.shape[-2:])), grid)
            else:
                with torch.autocast(q_b.device.type, enabled=False):  # bf16 cosines would tie and flip matches
                    match = torch.bmm(q_b.detach().float().transpose(1, 2), k_b).argmax(dim=2)  # (N, S2)
                valid = None
            matched = torch.gather(k_grid, 2, match[:, None].expand(-1, k_grid.shape[1], -1))
        global_loss = losses.info_nce(q, k, negatives=self.queue.keys.clone(), temperature=self.temperature)
        dense_q = q_grid.transpose(1, 2).reshape(-1, self.proj_dim)
        dense_k = matched.transpose(1, 2).reshape(-1, self.proj_dim)
        out = {}
        if valid is not None:  # only the positions the key view shows
            keep = valid.reshape(-1)
            dense_q, dense_k = dense_q[keep], dense_k[keep]
            out["dense_matched"] = keep.float().mean()
        if dense_q.shape[0]:
            dense_loss = losses.info_nce(dense_q, dense_k, negatives=self.queue2.keys.clone(),
                                         temperature=self.temperature)
        else:  # no view of the batch overlaps its pair: nothing to contrast
            dense_loss = q_grid.sum() * 0.0
        weight = self.lambda_at(progress)
        loss = (1 - weight) * global_loss + weight * dense_loss
        self.queue.enqueue(distributed.gather(k))
        self.queue2.enqueue(distributed.gather(k2))
        return {"loss": loss, "loss_global": global_loss.detach(), "loss_dense": dense_loss.detach(), **out}

    def on_step_end(self, progress: Progress) -> None:
        momentum_update(self.key_encoder, (self.encoder,), self.momentum)

    def descriptor_encoder(self) -> nn.Module:
        """Per-position descriptors for ``selfsup evaluate correspondence``: the backbone's feature map,
        L2-normalised (what the official ``forward_test`` returns), upsampled to the input's size."""
        return UpsampledFeatures(self.backbone)

    def extra_evaluations(self, test, *, data: str, device=None) -> dict:
        """PCK@1/3/5 of dense correspondence under known warps (:mod:`selfsup.evaluate.correspondence`),
        beside raw-pixel patches; the engine adds the random-initialisation floor."""
        from selfsup.evaluate.correspondence import dense_evaluations

        return dense_evaluations(self, test, data=data, device=device)
