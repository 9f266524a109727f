"""Real colour photos that install with scikit-learn and scikit-image, cut into labelled crops.

No colour image set can be downloaded everywhere, but these ship inside the two packages: the
two scikit-learn sample images (``china``, ``flower``) and seven scikit-image photos (``astronaut``,
``chelsea``, ``coffee``, ``hubble_deep_field``, ``immunohistochemistry``, ``retina``, ``rocket``).
Each photo is resized so that its shorter side is ``PHOTO_SIDE`` pixels, and random ``CROP`` x
``CROP`` crops are cut from it: training crops from the left three quarters of its width, test
crops from the right quarter, so that no test pixel was seen in training. A crop's label is its
photo. The crops are a pure function of the seed.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from selfsup.errors import DataError

from .dataset import ImageDataset

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket")
SKLEARN_PHOTOS = ("china", "flower")
PHOTO_SIDE, CROP = 160, 32
CROPS_PER_PHOTO = {"train": 500, "test": 100}
TRAIN_FRACTION = 0.75
SEED = 0


@lru_cache(maxsize=1)
def _photos() -> dict[str, np.ndarray]:
    """The photos, each resized to a shorter side of PHOTO_SIDE (decoded once per process)."""
    try:
        import skimage.data
    except ImportError:
        raise DataError("dataset 'photos' needs scikit-image: pip install 'selfsup[photos]'") from None
    from sklearn.datasets import load_sample_images

    photos = {name: np.asarray(getattr(skimage.data, name)())[..., :3] for name in SKIMAGE_PHOTOS}
    sample = load_sample_images()
    for name, image in zip(SKLEARN_PHOTOS, sample.images):
        photos[name] = np.asarray(image)
    return {name: _resized(image) for name, image in sorted(photos.items())}


def _resized(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    scale = PHOTO_SIDE / min(height, width)
    size = (max(PHOTO_SIDE, round(width * scale)), max(PHOTO_SIDE, round(height * scale)))
    return np.asarray(Image.fromarray(image.astype(np.uint8)).resize(size, Image.Resampling.BILINEAR,
                                                                      reducing_gap=None))


def load_photos(split: str) -> ImageDataset:
    """The ``split`` crops of every photo, ``(N, 3, CROP, CROP)`` uint8, labelled by photo."""
    rng = np.random.default_rng(SEED + (split == "test"))
    crops, labels = [], []
    photos = _photos()
    for label, image in enumerate(photos.values()):
        height, width = image.shape[:2]
        boundary = round(width * TRAIN_FRACTION)
        lo, hi = (0, boundary - CROP) if split == "train" else (boundary, width - CROP)
        count = CROPS_PER_PHOTO[split]
        tops = rng.integers(0, height - CROP + 1, count)
        lefts = rng.integers(lo, hi + 1, count)
        crops += [image[t:t + CROP, s:s + CROP] for t, s in zip(tops, lefts)]
        labels += [label] * count
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    return ImageDataset(images, torch.tensor(labels, dtype=torch.int64), list(photos), "photos")
