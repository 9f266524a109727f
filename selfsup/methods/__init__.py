"""Self-supervised methods, one file each, exported under the paper's name."""

from selfsup.methods.base import Batch, Method
from selfsup.methods.moco import MoCo
from selfsup.methods.simclr import SimCLR

METHODS: dict[str, type] = {"simclr": SimCLR, "moco": MoCo}
"""Registry used by the CLI and recipes: lower-case name -> class."""

__all__ = ["METHODS", "Batch", "Method", "MoCo", "SimCLR"]
