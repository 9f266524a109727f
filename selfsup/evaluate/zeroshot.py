"""Image-text evaluations: zero-shot classification by prompts, and image<->text retrieval recall@k."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

ZERO_SHOT_PROTOCOL = ("zero-shot: each class's weight is the normalised mean of its {templates} prompt embeddings "
                      "(CLIP's prompt ensembling); each test image goes to the class of highest cosine similarity; "
                      "top-1 accuracy over all classes, and among the held-out classes alone on their test images "
                      "(classes pretraining never saw in a caption), each beside chance")
TEXT_RETRIEVAL_PROTOCOL = ("image->text: every test image ranks the distinct test captions by cosine similarity, a hit "
                           "when one of its own captions is among the k first; text->image: every distinct caption ranks "
                           "the test images, a hit when one of the k first has that caption; recall@k is the share of "
                           "hits (Radford et al. 2021, table 13)")


def zero_shot_predict(image_emb: Tensor, class_weights: Tensor) -> Tensor:
    """``(N,)`` the class of highest cosine similarity for each image embedding."""
    if image_emb.ndim != 2 or class_weights.ndim != 2 or image_emb.shape[1] != class_weights.shape[1]:
        raise ValueError(f"image embeddings (N, D) and class weights (C, D) must share D, got "
                         f"{tuple(image_emb.shape)} and {tuple(class_weights.shape)}")
    return (F.normalize(image_emb.float(), dim=1) @ F.normalize(class_weights.float(), dim=1).T).argmax(dim=1)


def zero_shot_accuracy(image_emb: Tensor, labels: Tensor, class_weights: Tensor,
                       classes: Sequence[int] | None = None) -> float:
    """Top-1 accuracy of :func:`zero_shot_predict`; with ``classes``, only the images of those
    classes, choosing among those classes only."""
    labels = labels.cpu()
    if classes is not None:
        classes = torch.as_tensor(list(classes), dtype=torch.long)
        keep = torch.isin(labels, classes)
        if not keep.any():
            raise ValueError(f"no test image has a class in {classes.tolist()}")
        picked = classes[zero_shot_predict(image_emb[keep], class_weights[classes])]
        return int((picked == labels[keep]).sum()) / len(picked)
    return int((zero_shot_predict(image_emb, class_weights).cpu() == labels).sum()) / len(labels)


def zero_shot_entry(image_emb: Tensor, labels: Tensor, class_weights: Tensor, *, data: str,
                    held_out: Sequence[int] = (), templates: int | None = None) -> dict[str, Any]:
    """:func:`zero_shot_accuracy` as a results.json entry: all classes, and the held-out and seen
    ones separately when classes were held out, each with its chance level."""
    from selfsup.data.captions import TEMPLATES

    n = class_weights.shape[0]
    entry: dict[str, Any] = {"accuracy": zero_shot_accuracy(image_emb, labels, class_weights), "chance": 1 / n,
                             "classes": n}
    held_out = sorted(int(c) for c in held_out)
    if held_out:
        seen = [c for c in range(n) if c not in held_out]
        entry["held_out_accuracy"] = zero_shot_accuracy(image_emb, labels, class_weights, held_out)
        entry["held_out_chance"] = 1 / len(held_out)
        entry["held_out_classes"] = held_out
        entry["seen_accuracy"] = zero_shot_accuracy(image_emb, labels, class_weights, seen)
    entry.update(data=data, protocol=ZERO_SHOT_PROTOCOL.format(templates=templates or len(TEMPLATES)))
    return entry


def text_retrieval_recall(image_emb: Tensor, image_caption: Tensor, text_emb: Tensor,
                          ks: Sequence[int] = (1, 5, 10), *, offsets: Tensor | None = None) -> dict[str, float]:
    """Recall@k both ways between images and distinct captions (see :data:`TEXT_RETRIEVAL_PROTOCOL`).

    Args:
        image_emb: ``(N, D)`` image embeddings.
        image_caption: ``(N,)`` int64 row of ``text_emb`` that is image ``i``'s caption; or, with ``offsets``,
            the rows of every image's captions one after the other (image ``i`` owns
            ``image_caption[offsets[i]:offsets[i + 1]]``, as :class:`selfsup.data.CaptionedImages` keeps them).
        text_emb: ``(M, D)`` embeddings of the distinct captions.
        ks: the k's, each at most ``M`` (image->text) and ``N`` (text->image) or left out there.
        offsets: ``(N + 1,)`` where each image's captions start in ``image_caption``, when an image has several.

    An image is a hit at k when any of its captions is among its k first; every caption some image owns
    is a query, a hit when any of its images is among the k first (the 5-caption protocol of Flickr30k
    and COCO).
    """
    images, texts = F.normalize(image_emb.float(), dim=1), F.normalize(text_emb.float(), dim=1)
    n, m = images.shape[0], texts.shape[0]
    owned = image_caption.cpu().long()
    if offsets is None:
        offsets = torch.arange(n + 1)
    offsets = offsets.cpu().long()
    owner = torch.repeat_interleave(torch.arange(n), offsets.diff())       # the image of each owned caption
    pairs = (owner * m + owned).unique()                                    # (image, caption) pairs, as keys
    similarity = images @ texts.T                                           # (N, M)
    out: dict[str, float] = {}
    ranked_texts = similarity.argsort(dim=1, descending=True)
    for k in ks:
        if k <= m:
            keys = torch.arange(n)[:, None] * m + ranked_texts[:, :k]
            out[f"image_to_text_recall@{k}"] = float(torch.isin(keys, pairs).any(1).float().mean())
    queries = owned.unique()                                                # captions some image has
    ranked_images = similarity[:, queries].T.argsort(dim=1, descending=True)  # (Q, N)
    for k in ks:
        if k <= n:
            keys = ranked_images[:, :k] * m + queries[:, None]
            out[f"text_to_image_recall@{k}"] = float(torch.isin(keys, pairs).any(1).float().mean())
    return out


def text_retrieval_entry(image_emb: Tensor, image_caption: Tensor, text_emb: Tensor, captions: Sequence[str], *,
                         data: str, ks: Sequence[int] = (1, 5, 10), offsets: Tensor | None = None) -> dict[str, Any]:
    """:func:`text_retrieval_recall` as a results.json entry."""
    return {**text_retrieval_recall(image_emb, image_caption, text_emb, ks, offsets=offsets),
            "images": int(image_emb.shape[0]),
            "captions": len(captions), "data": data, "protocol": TEXT_RETRIEVAL_PROTOCOL}


__all__ = ["TEXT_RETRIEVAL_PROTOCOL", "ZERO_SHOT_PROTOCOL", "text_retrieval_entry", "text_retrieval_recall",
           "zero_shot_accuracy", "zero_shot_entry", "zero_shot_predict"]
