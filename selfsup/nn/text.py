"""Text towers for image-text methods (CLIP): a small transformer trained from scratch on open_clip's
tokens, and a locked pretrained sentence encoder (all-MiniLM-L6-v2, as LiT locks a tower)."""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from selfsup._optional import require_minilm, require_open_clip


class Tokenizer:
    """open_clip's byte-pair tokenizer (CLIP's 49,408-token vocabulary): strings -> int64
    ``(B, context_length)``, ``<start_of_text> tokens <end_of_text>`` then zeros; a longer caption
    is cut, keeping ``<end_of_text>`` last."""

    def __init__(self, context_length: int = 32) -> None:
        tokenizer = require_open_clip()
        self.context_length = context_length
        self._tokenizer = tokenizer.SimpleTokenizer(context_length=context_length)
        self.vocab_size = len(self._tokenizer.encoder)
        self.eot = self._tokenizer.eot_token_id

    def __call__(self, texts: list[str]) -> Tensor:
        return self._tokenizer(list(texts), context_length=self.context_length).long()


class TextTransformer(nn.Module):
    """CLIP's text encoder, small: token + learned position embeddings, pre-norm transformer blocks
    under a causal mask, the final LayerNorm, and the features at the ``<end_of_text>`` token (the
    highest id of the vocabulary, so ``argmax`` finds it, as in CLIP) through a linear projection.

    Args:
        vocab_size: tokens in the vocabulary (open_clip's: 49408).
        context_length: tokens per caption.
        width: model width (CLIP ViT-B/32: 512).
        layers: transformer blocks (CLIP: 12).
        heads: attention heads (CLIP: 8).
        out_dim: the joint embedding's dimension.
    """

    def __init__(self, vocab_size: int = 49408, context_length: int = 32, width: int = 128, layers: int = 4,
                 heads: int = 4, out_dim: int = 128) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"text width {width} must be divisible by the number of heads {heads}")
        self.context_length, self.out_dim = context_length, out_dim
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.empty(context_length, width))
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, out_dim, bias=False)
        mask = torch.full((context_length, context_length), float("-inf")).triu(1)
        self.register_buffer("mask", mask, persistent=False)
        # CLIP's initialisation (model.py, initialize_parameters): small normal embeddings.
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position, std=0.01)
        nn.init.normal_(self.proj.weight, std=width ** -0.5)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(f"tokens must be (B, <= {self.context_length}), got {tuple(tokens.shape)}")
        eot = tokens.argmax(dim=1)
        # Under the causal mask no position reads a later one, so the padding after the last
        # <end_of_text> of the batch cannot change the features taken there: cut it (exact; captions
        # are mostly far shorter than the context).
        length = int(eot.max()) + 1
        tokens = tokens[:, :length]
        x = self.token(tokens) + self.position[:length]
        x = self.blocks(x, mask=self.mask[:length, :length], is_causal=True)
        x = self.norm(x)
        return self.proj(x[torch.arange(len(tokens), device=tokens.device), eot])


class LockedSentenceEncoder:
    """all-MiniLM-L6-v2 (mean-pooled, normalised 384-d sentence embeddings), frozen and kept out of
    ``state_dict`` (its weights come from the installed package, not from checkpoints). Every
    distinct string is encoded once and cached: a locked tower gives the same features forever.

    A plain object, not an ``nn.Module``, so that the model that holds it neither trains nor saves it.
    """

    dim = 384

    def __init__(self, device: torch.device | str = "cpu") -> None:
        package = require_minilm()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the package: never reach out
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(package.get_model_path()), device=str(device))
        self.model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self._cache: dict[str, Tensor] = {}

    @torch.no_grad()
    def __call__(self, texts: list[str], *, progress: bool = False) -> Tensor:
        """``(len(texts), 384)`` float32 on the CPU."""
        new = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if new:
            features = self.model.encode(new, batch_size=256, convert_to_tensor=True, normalize_embeddings=True,
                                         show_progress_bar=progress)
            self._cache.update(zip(new, features.float().cpu()))
        return torch.stack([self._cache[t] for t in texts])


__all__ = ["LockedSentenceEncoder", "TextTransformer", "Tokenizer"]
