"""CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision")."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import losses
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.nn import Backbone
from selfsup.nn.modes import eval_mode
from selfsup.nn.text import LockedSentenceEncoder, TextTransformer, Tokenizer

TEXT_TOWERS = ("transformer", "minilm")


class CLIP(MethodBase):
    """An image tower and a text tower trained so that each image's embedding is nearest its caption's.

    Per batch of N (image, caption) pairs (Figure 3 of the paper)::

        u = normalize(W_i f(x))                # image tower: backbone + linear projection
        v = normalize(W_t g(caption))          # text tower + linear projection
        loss = clip(u, v, min(exp(t), 100))    # symmetric cross-entropy over the N x N logits

    ``t`` is learned, starting at ``log(1 / 0.07)``; the scale ``exp(t)`` is clipped at 100, as in
    the paper (section 2.5): the loss uses ``min(exp(t), 100)`` and ``t`` itself is clamped to
    ``[0, log 100]`` after every step, as the official training code does. Under DDP the loss
    scores each rank's images against every rank's captions.

    Text towers (``text_tower``):

    - ``transformer``: :class:`selfsup.nn.text.TextTransformer` from scratch on open_clip's BPE
      tokens (the ``clip`` extra);
    - ``minilm``: all-MiniLM-L6-v2 locked (the ``lit`` extra; Zhai et al. 2022 lock one tower, here
      the text one): its 384-d sentence embeddings, computed once per distinct caption, through a
      trained linear projection.

    Zero-shot classification (:meth:`zero_shot_weights`): each class's prompts are embedded,
    normalised, averaged and normalised again (CLIP's prompt ensembling); an image is given the
    class whose weight is nearest its embedding. The representation for probes and export is the
    backbone's (:meth:`eval_encoder`).

    Args:
        backbone: the image tower (any selfsup backbone).
        captions: the distinct caption strings of the training data (the engine passes them; batches
            give positions in this list). None: a tower for encoding and evaluation only.
        text_tower: ``transformer`` or ``minilm``.
        embed_dim: dimension of the joint space.
        text_width, text_layers, text_heads, context_length: the transformer tower's size.
        temperature: initial temperature (paper: 0.07, i.e. a logit scale of 1/0.07).
        max_logit_scale: the cap on ``exp(t)`` (paper: 100), applied to ``t`` after each step.
        learn_temperature: learn ``t`` (the paper) or keep it fixed.
    """

    data_kind: ClassVar[str] = "image_text"
    augment_recipe: ClassVar[str] = "clip"
    views_needed: ClassVar[tuple[int, int | None]] = (1, 1)
    needs_captions: ClassVar[bool] = True
    curves: ClassVar[tuple[str, ...]] = ("logit_scale",)

    def __init__(self, backbone: Backbone, *, captions: Sequence[str] | None = None,
                 text_tower: str = "transformer", embed_dim: int = 128, text_width: int = 128,
                 text_layers: int = 4, text_heads: int = 4, context_length: int = 32,
                 temperature: float = 0.07, max_logit_scale: float = 100.0, learn_temperature: bool = True) -> None:
        super().__init__()
        if text_tower not in TEXT_TOWERS:
            raise ValueError(f"text_tower must be one of {', '.join(TEXT_TOWERS)}, got {text_tower!r}")
        if not (0 < temperature and 1 / temperature <= max_logit_scale):
            raise ValueError(f"temperature must be > 0 with 1/temperature <= max_logit_scale={max_logit_scale}, "
                             f"got {temperature}")
        self.backbone, self.text_tower, self.max_logit_scale = backbone, text_tower, max_logit_scale
        self.image_proj = nn.Linear(backbone.out_dim, embed_dim, bias=False)
        nn.init.normal_(self.image_proj.weight, std=backbone.out_dim ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)), requires_grad=learn_temperature)
        self.captions = list(captions) if captions is not None else None
        if text_tower == "transformer":
            self.tokenizer = Tokenizer(context_length)
            self.text = TextTransformer(self.tokenizer.vocab_size, context_length, text_width, text_layers,
                                        text_heads, embed_dim)
            table = self.tokenizer(self.captions) if self.captions else torch.zeros(0, context_length, dtype=torch.long)
        else:
            self.locked = LockedSentenceEncoder()
            self.text = nn.Linear(LockedSentenceEncoder.dim, embed_dim, bias=False)
            table = self.locked(self.captions, progress=len(self.captions) > 10_000) if self.captions \
                else torch.zeros(0, LockedSentenceEncoder.dim)
        # Tokens (or locked features) of every training caption, looked up by caption id; not
        # saved: the data gives them again.
        self.register_buffer("caption_table", table, persistent=False)

    def scale(self) -> Tensor:
        """The logit scale the loss uses: ``exp(t)``, unclamped as in the official forward pass; ``t`` is
        clamped after each step (:meth:`on_step_end`). A clamp here would stop the gradient at the cap for
        good: ``exp(float32(log 100))`` is 100.0000076, so a scale clamped to 100 after a step would stay
        there whatever the loss asked."""
        return self.logit_scale.exp()

    def encode_image(self, images: Tensor) -> Tensor:
        """Normalised joint-space embeddings of float images ``(B, C, H, W)`` in [0, 1]."""
        return F.normalize(self.image_proj(self.backbone(images)), dim=1)

    def _text_from_table(self, rows: Tensor) -> Tensor:
        return F.normalize(self.text(rows), dim=1)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Normalised joint-space embeddings of caption strings."""
        device = self.logit_scale.device
        if self.text_tower == "transformer":
            rows = self.tokenizer(list(texts)).to(device)
        else:
            rows = self.locked(list(texts)).to(device)
        return self._text_from_table(rows)

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        return self.loss_from(self.embed(batch, progress), batch, progress)

    def embed(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        if not batch.extra or "caption_ids" not in batch.extra:
            raise ValueError("CLIP needs the captions of the batch: batch.extra['caption_ids'] (image_text data)")
        if len(self.caption_table) == 0:
            raise ValueError("CLIP was built without captions= (the training captions); it can encode but not train")
        images = self.encode_image(batch.views[0])
        # Each distinct caption of the batch through the text tower once (template captions repeat
        # a lot), then one row per pair: the same embeddings and gradients as encoding every row.
        distinct, row = batch.extra["caption_ids"].unique(return_inverse=True)
        return {"images": images, "texts": self._text_from_table(self.caption_table[distinct])[row]}

    def loss_from(self, embeddings: dict[str, Tensor], batch: Batch, progress: Progress) -> dict[str, Tensor]:
        scale = self.scale()
        return {"loss": losses.clip(embeddings["images"], embeddings["texts"], scale), "logit_scale": scale.detach()}

    def on_step_end(self, progress: Progress) -> None:
        """Clamp ``t`` to ``[0, log max_logit_scale]`` (the official code's clamp after each step)."""
        with torch.no_grad():
            self.logit_scale.clamp_(0, math.log(self.max_logit_scale))

    @torch.no_grad()
    def zero_shot_weights(self, classes: Sequence[str], templates: Sequence[str] | None = None) -> Tensor:
        """``(C, D)`` class weights from prompts: the normalised mean of each class's normalised
        prompt embeddings (templates default to :data:`selfsup.data.captions.TEMPLATES`)."""
        from selfsup.data.captions import TEMPLATES, class_prompts

        prompts = class_prompts(classes, TEMPLATES if templates is None else templates)
        with eval_mode(self):
            embeddings = self.encode_text([p for per_class in prompts for p in per_class])
        return F.normalize(embeddings.reshape(len(classes), -1, embeddings.shape[1]).mean(dim=1), dim=1)

    @torch.no_grad()
    def image_embeddings(self, images: Tensor, *, batch_size: int = 1024, device=None) -> Tensor:
        """Joint-space embeddings of uint8 images (in eval mode, on the CPU)."""
        from selfsup.evaluate import extract_features

        return extract_features(_ImageTower(self), images, batch_size=batch_size, device=device)

    def extra_evaluations(self, test, *, data: str, device=None) -> dict[str, dict[str, Any]]:
        """Zero-shot classification and image<->text retrieval on a captioned test split, as
        results.json entries (see :func:`selfsup.evaluate.zero_shot_entry` and
        :func:`selfsup.evaluate.text_retrieval_entry`)."""
        from selfsup import evaluate

        entries: dict[str, dict[str, Any]] = {}
        images = self.image_embeddings(test.inputs, device=device)
        if test.labels is not None and test.classes is not None:
            weights = self.zero_shot_weights(test.classes).cpu()
            entries["zero_shot"] = evaluate.zero_shot_entry(images, test.labels, weights, data=data,
                                                            held_out=getattr(test, "held_out", []))
        if hasattr(test, "captions"):
            with eval_mode(self):
                texts = torch.cat([self.encode_text(test.captions[i:i + 1024]).cpu()
                                   for i in range(0, len(test.captions), 1024)])
            entries["text_retrieval"] = evaluate.text_retrieval_entry(images, test.ids, texts, test.captions,
                                                                      data=data, offsets=test.offsets)
        return entries


class _ImageTower(nn.Module):
    """CLIP's image side (backbone + projection, normalised) as one encoder."""

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, images: Tensor) -> Tensor:
        return self.clip.encode_image(images)


__all__ = ["CLIP", "TEXT_TOWERS"]
