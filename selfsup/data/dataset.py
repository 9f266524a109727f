"""The in-memory image dataset every loader returns, and its size/channel conversions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from selfsup.errors import DataError

# ITU-R 601-2 luma in 16-bit fixed point, rounded: the formula PIL's
# Image.convert("L") uses, so a tensor conversion equals a PIL conversion.
_LUMA_WEIGHTS = (19595, 38470, 7471)

# Bound the float working memory of mean()/std()/resizing on large datasets.
_CHUNK = 4096


@dataclass
class ImageDataset:
    """Images as one uint8 tensor, with integer labels when they are known.

    Attributes:
        images: uint8 ``(N, C, H, W)`` with ``C`` in {1, 3}.
        labels: int64 ``(N,)`` class indices into ``classes``, or ``None``.
        classes: class names (``classes[k]`` names label ``k``), or ``None``.
        name: the name the dataset was loaded under (see ``selfsup.data.DATASETS``).
        files: each row's file, relative to the folder it was read from (folders), or ``None``
            (a standard set, whose rows are known by their position): what ``selfsup embed``
            writes beside each embedding.

    Small datasets live whole on the training device: ``ds.to("cuda")`` once,
    then index batches there.

    Examples:
        >>> ds = ImageDataset(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), ["a", "b"], "toy")
        >>> len(ds), ds.channels, ds.size
        (4, 1, 8)
    """

    images: Tensor
    labels: Tensor | None
    classes: list[str] | None
    name: str
    files: list[str] | None = None

    def __post_init__(self) -> None:
        images = self.images
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(
                f"ImageDataset {self.name!r}: images must be a uint8 tensor (N, C, H, W), got "
                f"{getattr(images, 'dtype', type(images).__name__)} of shape {tuple(getattr(images, 'shape', ()))}"
            )
        if images.shape[1] not in (1, 3):
            raise DataError(
                f"ImageDataset {self.name!r}: images must have 1 or 3 channels, got shape {tuple(images.shape)}; "
                "channels go in dim 1 (N, C, H, W)"
            )
        if self.files is not None and len(self.files) != images.shape[0]:
            raise DataError(f"ImageDataset {self.name!r}: {len(self.files)} file names for {images.shape[0]} images")
        if self.labels is not None:
            labels = self.labels
            if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
                raise DataError(
                    f"ImageDataset {self.name!r}: labels must be int64 of shape ({images.shape[0]},), "
                    f"got {labels.dtype} of shape {tuple(labels.shape)}"
                )
            # Range-checked on the CPU only: elsewhere min/max would force a device sync on every to()/subset().
            checkable = labels.device.type == "cpu" and self.classes is not None and labels.numel() > 0
            if checkable and not 0 <= labels.min() <= labels.max() < len(self.classes):
                raise DataError(
                    f"ImageDataset {self.name!r}: labels span {int(labels.min())}..{int(labels.max())} "
                    f"but there are {len(self.classes)} classes"
                )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def inputs(self) -> Tensor:
        """What an encoder reads: the images (a sequence set's are its signals)."""
        return self.images

    @property
    def channels(self) -> int:
        """Number of channels ``C`` (1 or 3)."""
        return self.images.shape[1]

    @property
    def size(self) -> int:
        """Side length of the (square) images; raises ValueError for non-square images."""
        height, width = self.images.shape[-2:]
        if height != width:
            raise DataError(
                f"ImageDataset {self.name!r} holds {height}x{width} images, not square; "
                "use images.shape[-2:] or convert(size=...) to center-crop them square"
            )
        return height

    @property
    def num_classes(self) -> int | None:
        """``len(classes)``, or ``None`` when the classes are unknown."""
        return None if self.classes is None else len(self.classes)

    def to(self, device: torch.device | str) -> ImageDataset:
        """The same dataset with images and labels on ``device`` (e.g. ``"cuda"``)."""
        labels = None if self.labels is None else self.labels.to(device)
        return ImageDataset(self.images.to(device), labels, self.classes, self.name, self.files)

    def subset(self, index: Tensor) -> ImageDataset:
        """The samples selected by ``index``: int64 positions ``(K,)`` or a bool mask ``(N,)``.

        Examples:
            >>> from selfsup.data import load
            >>> threes = load("digits", "test").subset(load("digits", "test").labels == 3)  # one class
            >>> len(threes), threes.labels.unique().tolist()
            (37, [3])
        """
        if not isinstance(index, Tensor) or index.dim() != 1:
            raise DataError(f"subset: index must be a 1-D tensor of positions or a bool mask, got {index!r}")
        if index.dtype == torch.bool:
            if index.numel() != len(self):
                raise DataError(f"subset: bool mask has {index.numel()} entries but the dataset has {len(self)}")
        elif index.dtype.is_floating_point or index.dtype.is_complex:
            raise DataError(f"subset: index must hold integer positions or bools, got {index.dtype}")
        index = index.to(self.images.device)
        labels = None if self.labels is None else self.labels[index]
        files = None
        if self.files is not None:
            rows = index.nonzero().squeeze(1) if index.dtype == torch.bool else index
            files = [self.files[i] for i in rows.tolist()]
        return ImageDataset(self.images[index], labels, self.classes, self.name, files)

    def mean(self) -> Tensor:
        """Per-channel mean in [0, 1] units: float32 ``(C,)`` on the images' device."""
        return self._moments()[0]

    def std(self) -> Tensor:
        """Per-channel population standard deviation in [0, 1] units: float32 ``(C,)``.

        Computed over all pixels of all images, as the normalisation constants
        of torchvision's examples are (``sqrt(E[x^2] - E[x]^2)``).
        """
        mean, mean_sq = self._moments()
        return (mean_sq.double() - mean.double().square()).clamp_min(0).sqrt().float()

    def _moments(self) -> tuple[Tensor, Tensor]:
        if len(self) == 0:
            raise DataError(f"ImageDataset {self.name!r} is empty: mean and std are undefined")
        total = torch.zeros(self.channels, dtype=torch.float64, device=self.images.device)
        total_sq = torch.zeros_like(total)
        for start in range(0, len(self), _CHUNK):
            chunk = self.images[start : start + _CHUNK].double().div_(255)
            total += chunk.sum(dim=(0, 2, 3))
            total_sq += chunk.square_().sum(dim=(0, 2, 3))
        count = self.images[:, 0].numel()
        return (total / count).float(), (total_sq / count).float()

    def convert(self, *, size: int | None = None, channels: int | None = None) -> ImageDataset:
        """Resize to ``size x size`` and/or convert to ``channels`` (1 or 3); ``None`` keeps as is.

        Resizing scales the shorter side to ``size`` (bilinear, antialiased,
        as PIL does) and center-crops the longer one. 1 -> 3 channels repeats
        the gray plane; 3 -> 1 takes the ITU-R 601-2 luma exactly as PIL's
        ``convert("L")``.

        Examples:
            >>> from selfsup.data import load
            >>> load("digits").convert(size=32, channels=3).images.shape  # for an ImageNet-style ResNet
            torch.Size([1437, 3, 32, 32])
        """
        images = self.images
        if size is not None:
            images = resize_square(images, size)
        if channels is not None:
            images = to_channels(images, channels)
        return ImageDataset(images, self.labels, self.classes, self.name, self.files)


def check_size(size: int | None) -> None:
    """Raise ValueError unless ``size`` is None or a positive int."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DataError(f"size must be a positive int (the side of the square images), got {size!r}")


def check_channels(channels: int | None) -> None:
    """Raise ValueError unless ``channels`` is None, 1 or 3."""
    if channels is not None and channels not in (1, 3):
        raise DataError(f"channels must be 1 (gray) or 3 (RGB), got {channels!r}")


def resize_square(images: Tensor, size: int) -> Tensor:
    """uint8 ``(N, C, H, W)`` -> ``(N, C, size, size)``: shorter side to ``size``, then center crop."""
    check_size(size)
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    import torchvision.transforms.v2.functional as TF  # here: torchvision takes seconds to import

    short = min(height, width)
    scaled = [max(size, round(height * size / short)), max(size, round(width * size / short))]
    out = torch.empty(*images.shape[:2], size, size, dtype=torch.uint8, device=images.device)
    for start in range(0, images.shape[0], _CHUNK):
        chunk = TF.resize(images[start : start + _CHUNK], scaled, antialias=True)
        out[start : start + _CHUNK] = TF.center_crop(chunk, [size, size])
    return out


def to_channels(images: Tensor, channels: int) -> Tensor:
    """uint8 ``(N, C, H, W)`` with C in {1, 3} -> ``(N, channels, H, W)``."""
    check_channels(channels)
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor(_LUMA_WEIGHTS, dtype=torch.int32, device=images.device).view(1, 3, 1, 1)
    out = torch.empty(images.shape[0], 1, *images.shape[-2:], dtype=torch.uint8, device=images.device)
    for start in range(0, images.shape[0], _CHUNK):
        luma = (images[start : start + _CHUNK].int() * weights).sum(dim=1, keepdim=True)
        out[start : start + _CHUNK] = ((luma + 0x8000) >> 16).to(torch.uint8)
    return out
