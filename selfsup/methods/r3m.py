"""R3M's time-contrastive objective (Nair et al. 2022, "R3M: A Universal Visual Representation for Robot
Manipulation"; official code facebookresearch/r3m)."""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from selfsup import augment, losses
from selfsup.methods.base import Batch, Progress, VideoMethodBase
from selfsup.nn import Backbone
from selfsup.nn.text import LockedSentenceEncoder, TextTransformer, Tokenizer

TEXT_TOWERS = ("minilm", "transformer")
_TEXT_DIM = 128  # the width and output of the transformer tower trained from scratch


class R3M(VideoMethodBase):
    """Five frames per video; the frame nearer in time is the positive, -L2 distance the similarity.

    Per batch (official ``r3m/trainer.py`` and ``r3m/utils/data_loaders.py``)::

        start, end, s0 < s1 <= s2  ~ sampled as the official loader   # 5 frames per video
        e = f(crop(x))                                                 # one crop for the 5 frames
        tcn = r3m_time_contrastive(e_s0, e_s1, e_s2, 3 x 2 shuffles)   # InfoNCE, sim = -||a - b||
        lang = r3m_language_reward(G(e_start, e_later), G(e_start, e_earlier), G(other videos))  # captioned
        loss = tcn_weight * tcn + language_weight * lang + l1_weight * mean ||e||_1 + l2_weight * mean ||e||_2

    The embeddings are the backbone's pooled features, unnormalised (R3M's ResNet with ``fc =
    Identity``). The penalties average over all five frames' embeddings, as the official's.

    The language term (``language_weight`` > 0, videos with ``captions.csv``): a score ``G(e_0, e_t,
    l)``, the official ``LanguageReward`` MLP (five Linear layers, ``reward_hidden`` wide) on the
    start frame's embedding, frame t's and the caption's, is trained to rank a later frame above an
    earlier one of the same video and above ``shuffles`` frames of other videos under this caption,
    for the later frames end, s1 and s2 against start, s0 and s1 (the official's three terms, each
    drawing its own shuffles). Clips without a caption count as zero, as the official's mask.
    The official encodes captions with a frozen pretrained DistilBERT (mean of its last layer);
    ``text_tower`` chooses the caption features here:

    - ``minilm``: the frozen pretrained all-MiniLM-L6-v2 (the ``lit`` extra), a distilled sentence
      encoder that is also mean-pooled: the official's design, 384-d instead of 768-d;
    - ``transformer``: CLIP's text tower (:class:`selfsup.nn.text.TextTransformer`, 128 wide)
      trained from scratch with the reward, for when no pretrained encoder may be installed.

    The official representation config (``config_rep.yaml``) trains with ``langweight`` 0, and so
    does the default here; the paper's R3M uses 1.

    Args:
        backbone: the frame encoder.
        alpha: the start frame lies in the first, the end frame in the last ``alpha`` of the video (0.2).
        shuffles: negatives from other videos per anchor (the official's ``num_negatives`` 3).
        tcn_weight, l1_weight, l2_weight: the loss weights (official ``config_rep.yaml``: 1, 1e-5, 1e-5).
        crop_scale: area range of the random resized crop shared by a video's five frames (the
            official ``rctraj`` augmentation: RandomResizedCrop with scale (0.2, 1.0), no flip, no colour
            change); None: none, the official ``config_rep.yaml``'s default (``doaug: none``).
        captions: the distinct captions of the training videos (the engine passes them; batches give
            rows of this list). None: a model rebuilt for evaluation, which cannot train the language term.
        language_weight: weight of the language term (0: off; the paper's 1 needs captioned videos).
        text_tower: ``minilm`` or ``transformer`` (above).
        reward_hidden: width of the score MLP (official ``hidden_dim`` 1024).
    """

    needs_captions: ClassVar[bool] = True

    def __init__(self, backbone: Backbone, *, alpha: float = 0.2, shuffles: int = 3, tcn_weight: float = 1.0,
                 l1_weight: float = 1e-5, l2_weight: float = 1e-5,
                 crop_scale: tuple[float, float] | None = (0.2, 1.0), captions: Sequence[str] | None = None,
                 language_weight: float = 0.0, text_tower: str = "minilm", reward_hidden: int = 1024) -> None:
        super().__init__()
        if not 0 < alpha < 0.5 or shuffles < 0:
            raise ValueError(f"need 0 < alpha < 0.5 and shuffles >= 0, got {alpha} and {shuffles}")
        if text_tower not in TEXT_TOWERS:
            raise ValueError(f"text_tower must be one of {', '.join(TEXT_TOWERS)}, got {text_tower!r}")
        if language_weight < 0:
            raise ValueError(f"language_weight must be >= 0, got {language_weight}")
        if language_weight > 0 and captions is not None and not captions:
            raise ValueError("language_weight > 0 needs captioned videos (root/captions.csv with 'sequence,caption' "
                             "rows); set method_args.language_weight=0 for videos without captions")
        self.backbone = backbone
        self.alpha, self.shuffles = alpha, shuffles
        self.tcn_weight, self.l1_weight, self.l2_weight = tcn_weight, l1_weight, l2_weight
        self.crop_scale = None if crop_scale is None else tuple(crop_scale)
        self.language_weight, self.text_tower = language_weight, text_tower
        if language_weight > 0:
            captions = list(captions or [])
            if text_tower == "minilm":
                self.locked = LockedSentenceEncoder()
                table, text_dim = (self.locked(captions) if captions else torch.zeros(0, LockedSentenceEncoder.dim),
                                   LockedSentenceEncoder.dim)
            else:
                tokenizer = Tokenizer(32)
                self.text = TextTransformer(tokenizer.vocab_size, 32, _TEXT_DIM, 4, 4, _TEXT_DIM)
                table, text_dim = (tokenizer(captions) if captions else torch.zeros(0, 32, dtype=torch.long)), _TEXT_DIM
            # Caption features (or tokens) by row of ``captions``; not saved: the data gives them again.
            self.register_buffer("caption_table", table, persistent=False)
            width = 2 * backbone.out_dim + text_dim
            self.reward = nn.Sequential(nn.Linear(width, reward_hidden), nn.ReLU(inplace=True),
                                        *[layer for _ in range(3) for layer in
                                          (nn.Linear(reward_hidden, reward_hidden), nn.ReLU(inplace=True))],
                                        nn.Linear(reward_hidden, 1))

    def clip_times(self, lengths: Tensor, generator: torch.Generator) -> Tensor:
        """``(B, 5)``: start, end, s0, s1, s2, drawn as the official loader (its 1-based frame numbers
        minus one): start in [0, int(αL)], end in [int((1-α)L) - 2, L - 2], s1 in [1, L - 2],
        s0 in [0, s1 - 1], s2 in [s1, L - 1]. Videos need at least 3 frames."""
        if bool((lengths < 3).any()):
            raise ValueError(f"R3M needs videos of at least 3 frames, got one of {int(lengths.min())}")
        n = len(lengths)

        def uniform(low: Tensor, high: Tensor) -> Tensor:  # integers in [low, high]
            return low + (torch.rand(n, generator=generator) * (high - low + 1)).long().clamp(max=high - low)

        zero = torch.zeros(n, dtype=torch.int64)
        start = uniform(zero, (self.alpha * lengths).long())
        end = uniform(((1 - self.alpha) * lengths).long() - 2, lengths - 2).clamp(min=0)
        s1 = uniform(zero + 1, lengths - 2)
        s0 = uniform(zero, s1 - 1)
        s2 = uniform(s1, lengths - 1)
        return torch.stack([start, end, s0, s1, s2], dim=1)

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        clips = batch.views[0]  # (B, 5, C, H, W)
        views = (augment.clip_views(clips, scale=self.crop_scale, flip_p=0.0, jitter=None) if self.crop_scale is not None
                 else augment.clip_to_float(clips))
        embeddings = self.backbone(views.flatten(0, 1)).float().view(clips.shape[0], 5, -1)
        _, _, s0, s1, s2 = embeddings.unbind(1)
        # Per negative, one permutation for the s0 anchor then one for the s2 anchor, as the official draws them.
        draws = [torch.randperm(len(s0), device=s0.device) for _ in range(2 * self.shuffles)]
        shuffles = (torch.stack(draws) if draws else torch.empty(0, len(s0), dtype=torch.int64, device=s0.device)
                    ).view(self.shuffles, 2, len(s0))
        tcn = losses.r3m_time_contrastive(s0, s1, s2, shuffles)
        l1 = embeddings.abs().sum(-1).mean()
        l2 = embeddings.norm(dim=-1).mean()
        loss = self.tcn_weight * tcn + self.l1_weight * l1 + self.l2_weight * l2
        out = {"tcn": tcn.detach(), "l1": l1.detach(), "l2": l2.detach()}
        if self.language_weight > 0:
            language = self.language_loss(embeddings, batch)
            loss = loss + self.language_weight * language
            out["language"] = language.detach()
        return {"loss": loss, **out}

    def language_loss(self, embeddings: Tensor, batch: Batch) -> Tensor:
        """The official three-term language loss on ``(B, 5, D)`` embeddings (start, end, s0, s1, s2)."""
        if not batch.extra or "caption_ids" not in batch.extra:
            raise ValueError("R3M's language term needs the clips' captions: batch.extra['caption_ids'] "
                             "(videos with captions.csv)")
        if len(self.caption_table) == 0:
            raise ValueError("R3M was built without captions= (the training captions); it cannot train its language term")
        ids = batch.extra["caption_ids"]
        distinct, row = ids.clamp(min=0).unique(return_inverse=True)
        rows = self.caption_table[distinct]
        language = (rows if self.text_tower == "minilm" else self.text(rows))[row]  # (B, L)
        start, end, s0, s1, s2 = embeddings.unbind(1)

        def score(first: Tensor, later: Tensor) -> Tensor:  # G(e_0, e_t, l): (B,)
            return self.reward(torch.cat([first, later, language], dim=1)).squeeze(1)

        terms = []
        for later, earlier in ((end, start), (s1, s0), (s2, s1)):
            negatives = [score(start, earlier)]
            for _ in range(self.shuffles):
                other = torch.randperm(len(start), device=start.device)
                negatives.append(score(start[other], later[other]))
            terms.append(losses.r3m_language_reward(score(start, later), torch.stack(negatives, 1), ids >= 0))
        return sum(terms) / 3
