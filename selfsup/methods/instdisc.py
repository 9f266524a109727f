"""InstDisc (Wu, Xiong, Yu, Lin 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination")."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import distributed, losses
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.nn import Backbone, MemoryBank
from selfsup.nn.dtypes import at_least_float32


class InstDisc(MethodBase):
    """Every image is its own class: a non-parametric softmax over a memory bank of all N images,
    learnt by noise-contrastive estimation.

    Per batch (sections 3.1-3.2 of the paper)::

        f = normalize(W · backbone(x))                  # (B, 128), one augmented view per image
        v = bank[i], v'_1..m = bank[uniform noise]      # its own entry and m = 4096 noise entries
        x_ik = (v_ik · f / τ) − log Z                   # log P(i | f) of the non-parametric softmax
        J = −log h(i, v) − Σ_k log(1 − h(k, v'))        # losses.nce, h = P / (P + m/N)
        (num_noise=0: J = −log softmax_i(bank · f / τ), the exact softmax over all N entries)
        J += λ · ‖f − bank[i]‖²                           # proximal term (section 3.4), λ = proximal
        bank[i] ← normalize(0.5 · bank[i] + 0.5 · f)    # after the optimiser step

    Z is estimated as ``N · mean exp(v' · f / τ)`` over a batch's noise scores, by default once, on
    the first batch, and then held fixed, as in the paper and its code (``log_z``, a checkpointed
    buffer). ``normalizer="every_batch"`` re-estimates it on every batch (still a constant for the
    gradient). Why the option: on Fashion-MNIST and digits with the small ConvNet, whose features
    start highly correlated (mean cosine 0.8), a Z fixed while the bank was random becomes far too
    small once the bank fills with those features; every noise entry then looks like data, all
    features are pushed away from the bank's mean together, and they collapse (the recipe's
    3-epoch run with the paper's Z: loss 16 -> 560, kNN 51%, below random weights; re-estimated
    each batch it trains normally, see README). The
    paper evaluates with a weighted kNN over the bank itself (``memory_bank``): the engine reports
    it as ``bank_knn`` next to the shared kNN on freshly extracted features.

    Under DDP the bank is replicated, never broadcast: every rank gathers the global batch's
    features and indices once per step and applies the same update. The noise indices of the
    whole global batch are drawn from a generator seeded by the step, and each rank takes its
    rows, so two processes draw exactly what one process draws for the same global batch; Z is the
    mean of the ranks' estimates over equal numbers of noise scores, that is the estimate of the
    whole batch. Resumed runs draw the same noise (it depends only on the step).

    Args:
        backbone: encoder producing ``backbone.out_dim`` features.
        num_samples: N, the number of training images (the engine passes it).
        proj_dim: feature dimension of the bank (128).
        num_noise: m noise samples per image (4096). 0: no NCE, the exact non-parametric softmax
            over all N bank entries with cross-entropy (paper eq. 2; the official code's
            ``--nce-k 0``, its ``LinearAverage`` + ``CrossEntropyLoss``). Affordable while N is small
            (the B x N scores of 8,192 images cost less than one conv layer of the ConvNet), and with
            every entry a negative on every step it learns far faster than 4,096 noise draws.
            ``log_z`` then holds the batch's mean exact log-normaliser, log Σ_j exp(v_j · f / τ).
        temperature: τ (0.07).
        bank_momentum: m of the bank update (0.5).
        noise_seed: seed of the noise draws (combined with the step).
        proximal: λ of the paper's proximal regularisation ``λ ‖v_i(t) − v_i(t−1)‖²`` (section 3.4),
            the squared distance between the image's feature and its bank entry, averaged over
            the batch; 0 (the official code, zhirongw/lemniscate.pytorch, whose author holds the
            bank momentum equivalent and easier to tune: issue #11).
        bank_init: ``"random"`` (the paper's and the official code's: random unit vectors) or
            ``"first_visit"`` (with ``num_noise=0``): an image's entry becomes its own feature the
            first time the image is seen, and entries not yet seen are left out of the softmax.
            Why: with random entries the first epoch's positive for every image is a random
            vector, so the first epoch teaches the encoder noise targets; over the paper's 200
            epochs that washes out, over a short run it does not (the learning bar with the exact
            softmax: kNN 8.68 points below the random-weight floor with random entries, 1.62
            below with ``first_visit``).
        normalizer: ``"first_batch"`` (the paper's: Z fixed after the first batch) or
            ``"every_batch"`` (Z re-estimated from each batch's noise scores).
        scoring: how the ``v · f`` scores are computed: ``"gather"`` takes the B x (1 + m) bank rows
            (the paper's code: memory-bound, O(B m D) bytes moved), ``"dense"`` multiplies by the
            whole bank and picks the columns (O(B N D) flops, compute-bound); ``"auto"`` (default)
            is dense while N <= 32 (1 + m), where it is the faster of the two
            (``benchmarks/bank.py``: 5.6x on Fashion-MNIST's N = 60,000 with m = 4096, 2 threads).
            The scores are the same either way.
    """

    exclude_bias_norm = False  # zhirongw/lemniscate.pytorch main.py: SGD(model.parameters(), weight_decay=...) decays every parameter

    augment_recipe: ClassVar[str] = "instdisc"
    views_needed: ClassVar[tuple[int, int | None]] = (1, 1)
    needs_num_samples: ClassVar[bool] = True
    curves: ClassVar[tuple[str, ...]] = ("log_z",)

    def __init__(self, backbone: Backbone, *, num_samples: int, proj_dim: int = 128, num_noise: int = 4096,
                 temperature: float = 0.07, bank_momentum: float = 0.5, noise_seed: int = 0,
                 normalizer: str = "first_batch", scoring: str = "auto", proximal: float = 0.0,
                 bank_init: str = "random") -> None:
        super().__init__()
        if num_noise < 0:
            raise ValueError(f"num_noise must be >= 0 (0: the full softmax), got {num_noise}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0 <= bank_momentum <= 1:
            raise ValueError(f"bank_momentum must be in [0, 1], got {bank_momentum}")
        if normalizer not in ("first_batch", "every_batch"):
            raise ValueError(f"normalizer must be 'first_batch' or 'every_batch', got {normalizer!r}")
        if scoring not in ("auto", "gather", "dense"):
            raise ValueError(f"scoring must be 'auto', 'gather' or 'dense', got {scoring!r}")
        if not proximal >= 0:
            raise ValueError(f"proximal must be >= 0, got {proximal}")
        if bank_init not in ("random", "first_visit"):
            raise ValueError(f"bank_init must be 'random' or 'first_visit', got {bank_init!r}")
        if bank_init == "first_visit" and num_noise:
            raise ValueError("bank_init='first_visit' goes with the exact softmax (num_noise=0)")
        if scoring == "auto":
            scoring = "dense" if num_samples <= 32 * (1 + num_noise) else "gather"
        self.backbone = backbone
        self.projector = nn.Linear(backbone.out_dim, proj_dim)
        self.bank = MemoryBank(num_samples, proj_dim)
        self.register_buffer("log_z", torch.tensor(float("nan")))
        self.num_noise, self.temperature, self.bank_momentum = num_noise, temperature, bank_momentum
        self.noise_seed, self.scoring, self.normalizer = noise_seed, scoring, normalizer
        self.proximal, self.bank_init = proximal, bank_init
        if bank_init == "first_visit":
            self.register_buffer("visited", torch.zeros(num_samples, dtype=torch.bool))
        self._z_estimated: bool | None = None  # read from log_z once per process (one device sync)
        self._pending: tuple[Tensor, Tensor] | None = None

    @property
    def noise_prob(self) -> float:
        """P_n = 1 / N of the uniform noise distribution."""
        return 1.0 / self.bank.size

    def embed(self, images: Tensor) -> Tensor:
        """The normalised 128-d features the bank holds."""
        return F.normalize(self.projector(self.backbone(images)), dim=1)

    def noise(self, step: int, rows: int, device: torch.device) -> Tensor:
        """``(rows, m)`` noise indices of this rank's share of global step ``step``."""
        world, rank = distributed.world_size(), distributed.rank()
        generator = torch.Generator(device=device).manual_seed(self.noise_seed * 1_000_003 + step)
        drawn = torch.randint(self.bank.size, (rows * world, self.num_noise), generator=generator, device=device)
        return drawn[rank * rows:(rank + 1) * rows]

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        f = at_least_float32(self.embed(batch.views[0]))
        index = batch.index.to(f.device)
        if self.num_noise == 0:                                           # exact softmax over the bank
            if self.bank_init == "first_visit":
                self.visit(f.detach(), index)
            with torch.autocast(f.device.type, enabled=False):  # scores / 0.07 need float32
                logits = f @ self.bank.features.to(f.dtype).T / self.temperature
            if self.bank_init == "first_visit":
                logits = logits.masked_fill(~self.visited, float("-inf"))
            loss = F.cross_entropy(logits, index)
            with torch.no_grad():  # the exact normaliser of the global batch, logged where NCE logs its estimate
                self.log_z.copy_(distributed.gather(torch.logsumexp(logits, dim=1)).mean())
            outputs = {"log_z": self.log_z.clone()}
        else:
            candidates = torch.cat([index[:, None], self.noise(progress.step, len(index), f.device)], dim=1)
            scores = self.scores(f, candidates)                           # v · f for own entry and noise
            if self.normalizer == "every_batch" or not self._z_known():
                self.estimate_log_z(scores)
            loss = losses.nce(scores, self.noise_prob, self.temperature, log_normalizer=self.log_z)
            outputs = {"log_z": self.log_z.clone()}
        if self.proximal:
            outputs["proximal"] = (f - self.bank.features[index].to(f.dtype)).square().sum(dim=1).mean()
            loss = loss + self.proximal * outputs["proximal"]
            outputs["proximal"] = outputs["proximal"].detach()
        self._pending = (distributed.gather(f.detach()), distributed.gather(index))
        return {"loss": loss, **outputs}

    @torch.no_grad()
    def visit(self, f: Tensor, index: Tensor) -> None:
        """``bank_init="first_visit"``: the entries of the global batch's images seen for the first
        time become their features, before the loss reads them (every rank fills the same ones)."""
        features, every = distributed.gather(f), distributed.gather(index)
        fresh = ~self.visited[every]
        self.bank.features[every[fresh]] = features[fresh].to(self.bank.features.dtype)
        self.visited[every] = True

    def scores(self, f: Tensor, candidates: Tensor) -> Tensor:
        """``(B, 1 + m)`` cosines of each feature with the bank entries ``candidates``, in float32."""
        bank = self.bank.features
        with torch.autocast(f.device.type, enabled=False):  # scores / 0.07 need float32
            if self.scoring == "dense":
                return (f @ bank.T).gather(1, candidates)
            return torch.bmm(bank[candidates], f.unsqueeze(2)).squeeze(2)

    def _z_known(self) -> bool:
        if self._z_estimated is None:
            self._z_estimated = bool(torch.isfinite(self.log_z))
        return self._z_estimated

    @torch.no_grad()
    def estimate_log_z(self, scores: Tensor) -> None:
        """Set log Z from this batch's noise scores (every rank's, when distributed)."""
        local = losses.nce_log_normalizer(scores, self.noise_prob, self.temperature).reshape(1)
        every_rank = distributed.gather(local)
        self.log_z.copy_(torch.logsumexp(every_rank, dim=0) - math.log(every_rank.numel()))
        self._z_estimated = True

    def on_step_end(self, progress: Progress) -> None:
        if self._pending is not None:
            features, index = self._pending
            self.bank.update(index, features, self.bank_momentum)
            self._pending = None

    def memory_bank(self) -> tuple[Tensor, nn.Module, float]:
        """The bank (rows in dataset order), the encoder into its space and the paper's kNN τ."""
        return self.bank.features, nn.Sequential(self.backbone, self.projector, _Normalize()), self.temperature

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._z_estimated = None  # a loaded log_z decides again whether Z is known

    def extra_repr(self) -> str:
        return (f"num_samples={self.bank.size}, num_noise={self.num_noise}, temperature={self.temperature}, "
                f"bank_momentum={self.bank_momentum}, normalizer={self.normalizer}, scoring={self.scoring}, "
                f"proximal={self.proximal}")


class _Normalize(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1)


__all__ = ["InstDisc"]
