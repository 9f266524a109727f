"""Self-supervised methods, one file each, exported under the paper's name."""

from selfsup.methods.base import Batch, Method, MethodBase, Progress
from selfsup.methods.byol import BYOL
from selfsup.methods.dino import DINO
from selfsup.methods.moco import MoCo
from selfsup.methods.simclr import SimCLR
from selfsup.methods.simsiam import SimSiam

METHODS: dict[str, type] = {"simclr": SimCLR, "moco": MoCo, "byol": BYOL, "dino": DINO, "simsiam": SimSiam}
"""Registry used by the CLI and recipes: lower-case name -> class."""

__all__ = ["BYOL", "DINO", "METHODS", "Batch", "Method", "MethodBase", "MoCo", "Progress", "SimCLR", "SimSiam"]
