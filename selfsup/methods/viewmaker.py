"""Viewmaker networks (Tamkin et al. 2021, "Viewmaker Networks: Learning Views for Unsupervised
Representation Learning"; official code alextamkin/viewmaker)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from torch import nn

from selfsup import augment, losses
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.nn import Backbone, projection_mlp
from selfsup.nn.backbones import SignalEncoder, WrappedEncoder
from selfsup.nn.viewmaker import ViewmakerNet, reverse_gradient


class Viewmaker(MethodBase):
    """SimCLR whose two views come from a learned, adversarial view generator.

    Per batch::

        x1, x2 = the images (or two hand-made views of them, hand_augment=True)
        v1, v2 = viewmaker(x1), viewmaker(x2)        # fresh noise each: two views, mean |v - x| <= ε
        z1, z2 = g(f(v1)), g(f(v2))
        loss = one_sided_nt_xent(z1, z2, τ)          # the encoder f, g minimise it
                                                     # the viewmaker maximises it (weight 1)

    The game is played in one backward pass: the perturbation goes through a gradient reversal, so
    the encoder receives the gradient of the loss and the viewmaker that of ``-adversary_weight x``
    the loss, what the official code's second optimiser step on ``-encoder_loss`` gives. The official
    code runs a second forward pass for the viewmaker's step (new noise, the same images, and, as its
    optimisers step one after the other, the encoder already updated by this batch); one pass gives
    about the same gradient at half the compute. Each side has its own optimiser through
    :meth:`param_groups`: the encoder the run's (``optim.*``, the paper's SGD), the viewmaker Adam at a
    constant ``viewmaker_lr`` (paper: 1e-3), as in the official ``configure_optimizers``.

    The official CIFAR config: ε = 0.05, 3 residual blocks, no MLP projection head (the encoder's
    last layer is a Linear to 128: ``proj_layers=1``), τ = 0.07, SGD lr 0.03, momentum 0.9, weight
    decay 1e-4, no hand augmentation. The loss is the official ``SimCLRObjective`` (first views as
    anchors, every view a candidate, the anchor itself included); ``objective="nt_xent"`` uses
    SimCLR's symmetric NT-Xent instead. Under DDP every rank's views are candidates (as SimCLR's
    gathered negatives), where the official Lightning code computes the loss per device: the same
    on one device.

    Args:
        backbone: the encoder f.
        budget: ε, each view's mean absolute perturbation before clamping (paper: 0.05).
        num_res_blocks: the viewmaker's residual blocks (official CIFAR config: 3).
        viewmaker_width: the viewmaker's first width, doubled twice (official: 32; see
            :class:`~selfsup.nn.viewmaker.ViewmakerNet`).
        proj_dim, proj_hidden_dim, proj_layers: the head g (1: a Linear to ``proj_dim``, the official).
        temperature: τ (0.07).
        viewmaker_lr: the viewmaker's Adam learning rate (1e-3), constant.
        adversary_weight: the weight of the viewmaker's loss, ``-weight x loss`` (official: 1).
        hand_augment: compose with the SimCLR augmentation first (the paper's ablation), else the
            viewmaker sees the images themselves.
        objective: ``official`` (:func:`selfsup.losses.one_sided_nt_xent`) or ``nt_xent``.
        clamp_views: clamp each view to the data's range (:attr:`bounds`), as the paper describes and the
            official ``Viewmaker`` class defaults to. The official CIFAR config leaves its ``clamp_views``
            unset, which its config reader takes as false, so that run's views were not clamped:
            ``clamp_views=false`` follows it (every view then changes by exactly the budget; clamped,
            dark Fashion-MNIST images lose about 40% of it at black).
        joint_bn: encode both views in one pass, BatchNorm's statistics over the two together (faster on
            small batches). False (the default) encodes each view on its own, as the official
            ``forward`` (``self.model(view1)``, ``self.model(view2)``), each batch of views normalised by
            its own statistics.
    """

    views_needed: ClassVar[tuple[int, int | None]] = (1, 2)
    sync_batchnorm = True
    exclude_bias_norm = False  # alextamkin/viewmaker image_systems.py configure_optimizers: SGD(self.model.parameters(), weight_decay=...) decays every parameter
    OBJECTIVES = ("official", "nt_xent")
    dims: ClassVar[int] = 2                          # the viewmaker's convolutions: images
    bounds: ClassVar[tuple[float, float]] = (0.0, 1.0)  # where a view is clamped: pixel values

    def __init__(self, backbone: Backbone, *, budget: float = 0.05, num_res_blocks: int = 3, proj_dim: int = 128,
                 proj_hidden_dim: int = 2048, proj_layers: int = 1, temperature: float = 0.07,
                 viewmaker_lr: float = 1e-3, adversary_weight: float = 1.0, hand_augment: bool = False,
                 objective: str = "official", viewmaker_width: int = 32, clamp_views: bool = True,
                 joint_bn: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if objective not in self.OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(self.OBJECTIVES)}, got {objective!r}")
        if viewmaker_lr <= 0 or adversary_weight < 0:
            raise ValueError(f"viewmaker_lr must be > 0 and adversary_weight >= 0, got {viewmaker_lr}, {adversary_weight}")
        if proj_layers not in (1, 2):
            raise ValueError(f"proj_layers must be 1 (the official Linear) or 2 (SimCLR's MLP), got {proj_layers}")
        signals = isinstance(backbone, SignalEncoder)
        if signals != (self.dims == 1):
            raise ValueError(f"Viewmaker on sequences needs the signal encoder (backbone.name: cpc_audio), got "
                             f"{type(backbone).__name__}" if self.dims == 1 else
                             "the signal encoder (cpc_audio) goes with method viewmaker_sequence, on data.name=wav")
        if signals and hand_augment:
            raise ValueError("hand_augment: there are no hand-made views of signals to compose with")
        self.backbone = backbone
        self.projector = projection_mlp(backbone.out_dim, proj_hidden_dim, proj_dim, num_layers=proj_layers)
        self.viewmaker = ViewmakerNet(backbone.in_channels, budget=budget, num_res_blocks=num_res_blocks,
                                      dims=self.dims, width=viewmaker_width)
        self.temperature, self.viewmaker_lr, self.adversary_weight = temperature, viewmaker_lr, adversary_weight
        self.hand_augment, self.objective, self.clamp_views = hand_augment, objective, bool(clamp_views)
        self.joint_bn = bool(joint_bn)

    def augmentation(self, image_size: int) -> augment.Augmentation:
        """The SimCLR views when ``hand_augment``, else the image itself (one view)."""
        return augment.recipe("simclr" if self.hand_augment else "none", image_size)

    def make_views(self, batch: Batch) -> tuple[list[Tensor], Tensor]:
        """Two learned views of the batch (the gradient reaching the viewmaker reversed and weighted),
        and their mean absolute distortion after clamping."""
        check_views(batch, self)
        sources = batch.views if len(batch.views) == 2 else [batch.views[0], batch.views[0]]
        views = [self._bounded(x + reverse_gradient(self.viewmaker.perturbation(x), self.adversary_weight))
                 for x in sources]
        distortion = sum((v.detach() - x).abs().mean() for v, x in zip(views, sources)) / 2
        return views, distortion

    def _bounded(self, views: Tensor) -> Tensor:
        return views.clamp(*self.bounds) if self.clamp_views else views

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        (v1, v2), distortion = self.make_views(batch)
        return {"loss": self.loss_of_views(v1, v2), "view_distortion": distortion}

    def loss_of_views(self, v1: Tensor, v2: Tensor) -> Tensor:
        """The contrastive loss of two batches of views (every rank's projections as candidates)."""
        if self.joint_bn:
            z1, z2 = self.projector(self.encode(torch.cat((v1, v2)))).chunk(2)
        else:
            z1, z2 = self.projector(self.encode(v1)), self.projector(self.encode(v2))
        if self.objective == "nt_xent":
            return losses.nt_xent(z1, z2, self.temperature)
        return losses.one_sided_nt_xent(z1, z2, self.temperature)

    def encode(self, views: Tensor) -> Tensor:
        """f: the backbone's features of a batch of views."""
        return self.backbone(views)

    @torch.no_grad()
    def learned_views(self, views: list[Tensor]) -> tuple[list[Tensor], list[str]]:
        """For ``views.png`` (whose first column is the image): the hand-made views, if any, then the
        viewmaker's two views of them."""
        sources = views if len(views) == 2 else [views[0], views[0]]
        learned = [self._bounded(x + self.viewmaker.perturbation(x)) for x in sources]
        if self.hand_augment:
            return [*views, *learned], ["view 1", "view 2", "learned 1", "learned 2"]
        return learned, ["learned 1", "learned 2"]

    def param_groups(self) -> list[dict]:
        """The encoder and head with the run's optimiser; the viewmaker with its own constant Adam."""
        encoder = [p for name, p in self.named_parameters() if not name.startswith("viewmaker.")]
        return [{"params": encoder},
                {"params": list(self.viewmaker.parameters()), "optimizer": {"name": "adam", "lr": self.viewmaker_lr},
                 "weight_decay_scale": 0.0}]


class SignalMean(WrappedEncoder):
    """A signal's representation: the signal encoder's codes averaged over time, ``(B, D)``."""

    wrapped = "encoder"

    def __init__(self, encoder: SignalEncoder) -> None:
        super().__init__()
        self.encoder, self.out_dim = encoder, encoder.out_dim

    def forward(self, signals: Tensor) -> Tensor:
        return self.encoder(signals).mean(dim=1)


class ViewmakerSequence(Viewmaker):
    """Viewmaker on raw 1-D signals (speech windows, ``data.name: wav``): the same game with the
    viewmaker's 1-D network on the waveform and the signal encoder's codes averaged over time as f.

    The views are clamped to [-1, 1] (``clamp_views``), the range of the decoded samples (images: [0, 1]); the budget
    is the mean absolute change per window, so set it against the signal's own scale (the paper's
    0.05 is for pixels in [0, 1]; the recipe's choice is measured on its speech). The paper's audio
    experiments put the viewmaker on spectrograms; on the raw waveform it also sees the phase.
    No hand augmentation exists for signals here, so ``hand_augment`` must stay false.

    Args: as :class:`Viewmaker`, with a :class:`selfsup.nn.backbones.SignalEncoder` backbone
    (``backbone.name: cpc_audio``).
    """

    data_kind: ClassVar[str] = "sequences"
    views_needed: ClassVar[tuple[int, int | None]] = (1, 1)
    dims: ClassVar[int] = 1
    bounds: ClassVar[tuple[float, float]] = (-1.0, 1.0)

    def augmentation(self, image_size: int) -> None:
        """No hand augmentation: the windows as they are."""
        return None

    def encode(self, views: Tensor) -> Tensor:
        """f: the signal encoder's codes averaged over time."""
        return self.backbone(views).mean(dim=1)

    def eval_encoder(self) -> nn.Module:
        """The signal encoder's codes averaged over time."""
        return SignalMean(self.backbone)
