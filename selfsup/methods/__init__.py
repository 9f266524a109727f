"""Self-supervised methods, one file each, exported under the paper's name."""

from selfsup.methods.base import Batch, Method, MethodBase, Progress
from selfsup.methods.byol import BYOL
from selfsup.methods.clip import CLIP
from selfsup.methods.cmc import CMC
from selfsup.methods.cpc import CPCImage, CPCSequence
from selfsup.methods.colorization import Colorization
from selfsup.methods.dense_object_net import DenseObjectNet
from selfsup.methods.densecl import DenseCL
from selfsup.methods.dgi import DGI
from selfsup.methods.dim import DeepInfoMax
from selfsup.methods.dino import DINO
from selfsup.methods.instdisc import InstDisc
from selfsup.methods.invaspread import InvaSpread
from selfsup.methods.jigsaw import Jigsaw
from selfsup.methods.moco import MoCo
from selfsup.methods.mocov3 import MoCoV3
from selfsup.methods.npair import NPair
from selfsup.methods.r3m import R3M
from selfsup.methods.relative_location import RelativeLocation
from selfsup.methods.rotation import Rotation
from selfsup.methods.simclr import SimCLR
from selfsup.methods.simsiam import SimSiam
from selfsup.methods.supcon import SupCon
from selfsup.methods.tcn import TCN
from selfsup.methods.triplet import Triplet
from selfsup.methods.video_colorization import VideoColorization
from selfsup.methods.viewmaker import Viewmaker, ViewmakerSequence

METHODS: dict[str, type] = {
    "simclr": SimCLR, "moco": MoCo, "mocov3": MoCoV3, "instdisc": InstDisc, "invaspread": InvaSpread,
    "byol": BYOL, "simsiam": SimSiam, "dino": DINO, "supcon": SupCon, "triplet": Triplet, "npair": NPair,
    "rotation": Rotation, "relative_location": RelativeLocation, "jigsaw": Jigsaw, "colorization": Colorization,
    "cmc": CMC, "cpc": CPCImage, "cpc_sequence": CPCSequence, "dim": DeepInfoMax,
    "dgi": DGI, "clip": CLIP, "viewmaker": Viewmaker, "viewmaker_sequence": ViewmakerSequence,
    "dense_object_net": DenseObjectNet, "densecl": DenseCL, "tcn": TCN, "r3m": R3M,
    "video_colorization": VideoColorization,
}
"""Registry used by the CLI and recipes: lower-case name -> class."""

__all__ = [
    "BYOL", "CLIP", "CMC", "CPCImage", "CPCSequence", "DGI", "DINO", "DeepInfoMax", "METHODS", "Batch", "Colorization", "InstDisc", "InvaSpread", "Jigsaw", "Method", "MethodBase",
    "MoCo", "MoCoV3", "NPair", "Progress", "RelativeLocation", "Rotation", "SimCLR", "SimSiam", "SupCon", "Triplet",
    "Viewmaker", "ViewmakerSequence", "DenseObjectNet", "DenseCL", "R3M", "TCN", "VideoColorization",
]
