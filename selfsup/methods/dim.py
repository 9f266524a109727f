"""Deep InfoMax (Hjelm et al. 2019, "Learning deep representations by mutual information
estimation and maximization")."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import losses
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.nn import Backbone, eval_mode, feature_map, split_features
from selfsup.nn.dtypes import at_least_float32

# The global discriminator reads the feature map pooled to this grid, so its size does not depend on the image's.
_GLOBAL_GRID = 3


class _Residual(nn.Module):
    """``block(x) + shortcut(x)``: the paper's discriminator embeddings (a 2-layer net beside a
    linear shortcut, appendix A.2)."""

    def __init__(self, block: nn.Module, shortcut: nn.Module) -> None:
        super().__init__()
        self.block, self.shortcut = block, shortcut

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x) + self.shortcut(x)


def local_embedding(channels: int, dim: int) -> nn.Module:
    """φ_L: 1x1 conv - ReLU - 1x1 conv beside a 1x1 linear shortcut, per feature-map position."""
    return _Residual(nn.Sequential(nn.Conv2d(channels, dim, 1), nn.ReLU(inplace=True), nn.Conv2d(dim, dim, 1)),
                     nn.Conv2d(channels, dim, 1))


class OfficialEmbedding(nn.Module):
    """rdevon/DIM's ``MI1x1ConvNet``, its embedding for both the local map and the global code: a 1x1 conv without
    bias, BatchNorm, ReLU and a 1x1 conv, beside a bias-free 1x1 shortcut initialised near the identity (ones on
    its diagonal, the rest uniform in ±0.01, when the width does not shrink), the sum LayerNorm-ed over channels.
    A ``(B, C)`` code is read as a ``(B, C, 1, 1)`` map, as the official code reshapes it."""

    def __init__(self, channels: int, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(channels, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True),
                                   nn.Conv2d(dim, dim, 1))
        self.shortcut = nn.Conv2d(channels, dim, 1, bias=False)
        if dim >= channels:
            with torch.no_grad():
                self.shortcut.weight.uniform_(-0.01, 0.01)
                self.shortcut.weight[torch.arange(channels), torch.arange(channels), 0, 0] = 1.0
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.ndim == 2
        x = x[:, :, None, None] if flat else x
        h = self.norm((self.block(x) + self.shortcut(x)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return h.flatten(1) if flat else h


def global_embedding(features: int, dim: int) -> nn.Module:
    """φ_G: linear - ReLU - linear beside a linear shortcut, on the global feature."""
    return _Residual(nn.Sequential(nn.Linear(features, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim)),
                     nn.Linear(features, dim))


def local_global_scores(local: Tensor, global_: Tensor) -> tuple[Tensor, Tensor]:
    """Scores ``T(l_{i,p}, y_j) = l_{i,p} · y_j`` of every local vector with every global one
    (the paper's encode-and-dot-product discriminator).

    Args:
        local: ``(B, P, D)`` embedded feature-map positions of each image.
        global_: ``(B, D)`` embedded global features.

    Returns:
        ``(positives, negatives)``: ``(B, P)`` scores of each image's positions with its own global
        feature, and ``(B, B - 1, P)`` with the other images' (row i leaves out j = i).
    """
    scores = torch.einsum("ipd,jd->ijp", local, global_)                 # (B, B, P)
    b = scores.shape[0]
    own = torch.eye(b, dtype=torch.bool, device=scores.device)
    return scores[own], scores[~own].view(b, b - 1, -1)


def prior_matching_losses(discriminator: nn.Module, codes: Tensor, *, gradient_penalty: float = 1.0,
                          generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The prior term (section 3.3) as the official code plays it (rdevon/DIM,
    ``cortex_DIM/models/prior_matching.py`` with its ``Discriminator.routine``, GAN measure).

    A discriminator D tells samples of the uniform prior on ``[0, 1]^d`` ("real") from the
    squashed codes ``σ(y)`` ("fake"); the encoder learns to fool it with the non-saturating loss::

        discriminator: softplus(−D(real)) + softplus(D(sg(σ(y))))
                       + gradient_penalty · ½ (E‖∇ₓD(real)‖² + E‖∇ₓD(σ(y))‖²)      # Mescheder et al. 2018
        encoder:       softplus(−D(σ(y)))                                          # D's weights held

    Returns ``(discriminator loss, encoder loss)``, both means over the batch. Summed into one
    loss the two train their own side only: the first never reaches the codes, the second never
    D's parameters, so the method weighs the encoder's term by γ alone, as the official code.
    """
    fake = torch.sigmoid(at_least_float32(codes))
    real = torch.rand(fake.shape, device=fake.device, generator=generator)
    logits_real, logits_fake = discriminator(real), discriminator(fake.detach())
    disc_loss = F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()
    if gradient_penalty:
        penalties = []
        for sample in (real, fake.detach()):
            sample = sample.detach().requires_grad_(True)
            grad, = torch.autograd.grad(discriminator(sample).sum(), sample, create_graph=True)
            penalties.append(grad.square().sum(dim=1).mean())
        disc_loss = disc_loss + gradient_penalty * 0.5 * (penalties[0] + penalties[1])
    held = {name: p.detach() for name, p in discriminator.named_parameters()}
    encoder_loss = F.softplus(-torch.func.functional_call(discriminator, held, (fake,))).mean()
    return disc_loss, encoder_loss


class DeepInfoMax(MethodBase):
    """Maximise the mutual information between an image's global feature and its local features.

    Per batch of B images (section 3 of the paper; ``C`` an intermediate feature map of the
    backbone, ``y`` a linear code of the backbone's features computed on from it)::

        C = feature map (B, c, h, w);  y = W · f(C)                        # (B, code_dim)
        local:  T(i, j, p) = φ_L(C_i)[p] · φ_G(y_j)                        # positives i = j, negatives i ≠ j
                loss_L = jsd_mi(T[i=j], T[i≠j])                           # averaged over the h·w positions
        global: T_G(i, j) = D_G([flatten(pool3x3(C_i)), y_j]),  negatives: y rolled by one image
        prior:  D_P tells σ(y) from Uniform[0,1] samples (its loss d_P); the encoder fools it (g_P)
        loss = α·loss_G + β·loss_L + d_P + γ·g_P                           # γ on the encoder's term only

    The defaults are the paper's DIM(L): α = 0, β = 1, γ = 0.1. The prior term is the official
    code's (:func:`prior_matching_losses`: non-saturating encoder loss, gradient penalty on the
    discriminator, γ on the encoder's term only). The JSD estimator is
    :func:`selfsup.losses.jsd_mi`. The local features are an intermediate layer, as in the paper
    (:func:`selfsup.nn.split_features`: the ConvNet's 7x7 map at 28 pixels); ``local_layer="last"``
    takes the last feature map instead, whose 3x3 positions at 28 pixels each see nearly the whole
    image, which makes the local task easy (measured: kNN 72% after 3 epochs, below random weights).
    Evaluation and export use the backbone; the code ``y`` is the paper's "Y" representation, kept
    for the loss. One view per
    image, the image itself: the paper trains without augmentation (the method's views are ``none``;
    with flips the learning bar read the same, 1 of 3 seeds either way).

    Where this follows the paper's text and the official code (rdevon/DIM) differs:
    the embeddings φ_L, φ_G are by default the paper's 2-layer nets beside a linear shortcut, where the
    code's ``MI1x1ConvNet`` adds a BatchNorm after the first layer, a shortcut initialised near the
    identity and a LayerNorm over the sum (``embedding="official"``, :class:`OfficialEmbedding`; the
    paper's stay the default because the recipe's measurements were made with them); the global term scores the pooled intermediate map against the code,
    one rolled negative per image, where the paper flattens the last convolutional map and the code's
    ``GlobalDIM`` uses a dot-product critic over every other image; and the prior's gradient penalty
    is the mean over the batch, where the code's ``contrastive_gradient_penalty`` takes ``[-1]`` of the
    discriminator's ``(B, 1)`` output, the last sample alone (an effective weight about 1/B of ours).

    Args:
        backbone: an encoder with spatial features (``selfsup.nn.feature_map``).
        code_dim: size of ``y`` (paper: 64).
        embed_dim: the discriminators' width (paper: 2048 for local, here 512 by default).
        global_weight, local_weight, prior_weight: α, β, γ.
        local_layer: ``"intermediate"`` (the paper's) or ``"last"``.
        prior_gradient_penalty: weight of the prior discriminator's gradient penalty (official: 1).
        estimator: the local term's mutual-information estimator, ``"jsd"`` (the default here and
            the paper's main one) or ``"nce"``, the official code's infoNCE
            (:func:`selfsup.losses.local_global_info_nce`: each position's own global feature
            against the batch's other images' positions), which the paper found the best for
            downstream classification (section 4.2) and which on Fashion-MNIST at a short budget
            is the one that learns beyond random weights (see the recipe).
        embedding: ``"paper"`` (appendix A.2's nets) or ``"official"`` (the code's ``MI1x1ConvNet``).
    """

    augment_recipe: ClassVar[str] = "none"  # the paper trains without augmentation
    views_needed: ClassVar[tuple[int, int | None]] = (1, 1)
    curves: ClassVar[tuple[str, ...]] = ("local_mi", "global_mi", "prior", "prior_encoder")

    def __init__(self, backbone: Backbone, *, code_dim: int = 64, embed_dim: int = 512, global_weight: float = 0.0,
                 local_weight: float = 1.0, prior_weight: float = 0.1, local_layer: str = "intermediate",
                 prior_gradient_penalty: float = 1.0, estimator: str = "jsd", embedding: str = "paper") -> None:
        super().__init__()
        if embedding not in ("paper", "official"):
            raise ValueError(f"embedding must be 'paper' or 'official', got {embedding!r}")
        if estimator not in ("jsd", "nce"):
            raise ValueError(f"estimator must be 'jsd' or 'nce', got {estimator!r}")
        self.estimator = estimator
        if min(global_weight, local_weight, prior_weight) < 0 or global_weight + local_weight == 0:
            raise ValueError(f"the weights must be >= 0 with global_weight or local_weight > 0, got α={global_weight} "
                             f"β={local_weight} γ={prior_weight}")
        if local_layer not in ("intermediate", "last"):
            raise ValueError(f"local_layer must be 'intermediate' or 'last', got {local_layer!r}")
        self.backbone, self.local_layer = backbone, local_layer
        with torch.no_grad(), eval_mode(backbone):  # a shape probe must not move BatchNorm's running statistics
            channels = self.features(torch.zeros(2, backbone.in_channels, 32, 32))[0].shape[1]
        self.code = nn.Linear(backbone.out_dim, code_dim)
        self.weights = (global_weight, local_weight, prior_weight)
        self.prior_gradient_penalty = prior_gradient_penalty
        if local_weight and embedding == "official":  # a code already as wide as the embedding: NopNet, as there
            self.local_embed = OfficialEmbedding(channels, embed_dim)
            self.global_embed = nn.Identity() if code_dim == embed_dim else OfficialEmbedding(code_dim, embed_dim)
        elif local_weight:
            self.local_embed = local_embedding(channels, embed_dim)
            self.global_embed = global_embedding(code_dim, embed_dim)
        if global_weight:
            self.global_disc = nn.Sequential(nn.Linear(channels * _GLOBAL_GRID ** 2 + code_dim, embed_dim), nn.ReLU(inplace=True),
                                             nn.Linear(embed_dim, embed_dim), nn.ReLU(inplace=True),
                                             nn.Linear(embed_dim, 1))
        if prior_weight:
            self.prior_disc = nn.Sequential(nn.Linear(code_dim, 1000), nn.ReLU(inplace=True), nn.Linear(1000, 200),
                                            nn.ReLU(inplace=True), nn.Linear(200, 1))

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The local feature map and the backbone's global features, in one pass."""
        if self.local_layer == "intermediate":
            return split_features(self.backbone, images)
        maps = feature_map(self.backbone, images)
        return maps, maps.mean(dim=(2, 3))

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        maps, features = self.features(batch.views[0])
        y = self.code(features)
        alpha, beta, gamma = self.weights
        outputs: dict[str, Tensor] = {}
        loss = torch.zeros((), device=y.device)
        if beta:
            local = at_least_float32(self.local_embed(maps).flatten(2).transpose(1, 2))  # (B, hw, D)
            global_ = at_least_float32(self.global_embed(y))
            if self.estimator == "jsd":
                outputs["local_mi"] = losses.jsd_mi(*local_global_scores(local, global_))
            else:
                outputs["local_mi"] = losses.local_global_info_nce(local, global_)
            loss = loss + beta * outputs["local_mi"]
        if alpha:
            flat = F.adaptive_avg_pool2d(maps, _GLOBAL_GRID).flatten(1)
            pairs = torch.cat([torch.cat([flat, y], 1), torch.cat([flat, y.roll(1, 0)], 1)])
            scores = at_least_float32(self.global_disc(pairs))
            positives, negatives = scores.chunk(2)
            outputs["global_mi"] = losses.jsd_mi(positives, negatives)
            loss = loss + alpha * outputs["global_mi"]
        if gamma:
            outputs["prior"], outputs["prior_encoder"] = prior_matching_losses(
                self.prior_disc, y, gradient_penalty=self.prior_gradient_penalty)
            loss = loss + outputs["prior"] + gamma * outputs["prior_encoder"]
        return {"loss": loss, **{k: v.detach() for k, v in outputs.items()}}


__all__ = ["DeepInfoMax", "OfficialEmbedding", "global_embedding", "local_embedding", "local_global_scores", "prior_matching_losses"]
