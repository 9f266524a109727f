"""Graphs: one graph with node features, labels and a train/test split of its nodes (Deep Graph Infomax).

Names (``GRAPH_DATASETS``):

- ``karate``: Zachary's karate club as PyTorch Geometric ships it (34 nodes, 4 communities,
  one-hot node features); test nodes: every other node of each community.
- ``sbm``: a generated stochastic block model (PyTorch Geometric's ``stochastic_blockmodel_graph``),
  ``blocks`` communities of ``block_size`` nodes, edge probability ``p_in`` inside and ``p_out``
  across, and node features that carry a weak class signal (a block-dependent mean under Gaussian
  noise, ``feature_noise``), seeded; test nodes: a seeded half of each block.
- ``planetoid``: Cora, CiteSeer or PubMed in the Planetoid format (the ``ind.<name>.*`` files) from a
  local folder, with the public split (its 1,000 test nodes; the 140 / 120 / 60 labelled training
  nodes are the probe's training set). The files are pickles: they are read with an unpickler that
  accepts only the numpy / scipy array types and containers the format uses, so a file that would
  run code is refused, not run.

PyTorch Geometric is an optional extra: ``pip install 'selfsup[graph]'``.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from selfsup._optional import require_pyg
from selfsup.data.sources import ImageBatch
from selfsup.errors import DataError

GRAPH_DATASETS: tuple[str, ...] = ("karate", "sbm", "planetoid")


@dataclass
class Graph:
    """A graph: float node features ``x`` (N, F), ``edge_index`` (2, E) int64, int64 labels (N,),
    boolean ``train_mask`` / ``test_mask`` (N,) of the probe's nodes, class names and a name."""

    x: Tensor
    edge_index: Tensor
    labels: Tensor
    train_mask: Tensor
    test_mask: Tensor
    classes: list[str]
    name: str

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        if self.x.ndim != 2 or not self.x.is_floating_point():
            raise DataError(f"graph {self.name!r}: node features must be float (N, F), got {tuple(self.x.shape)}")
        if self.edge_index.ndim != 2 or self.edge_index.shape[0] != 2 or self.edge_index.dtype != torch.int64:
            raise DataError(f"graph {self.name!r}: edge_index must be int64 (2, E), got "
                            f"{self.edge_index.dtype} {tuple(self.edge_index.shape)}")
        if self.edge_index.numel() and not 0 <= int(self.edge_index.min()) <= int(self.edge_index.max()) < n:
            raise DataError(f"graph {self.name!r}: edge_index names nodes outside 0..{n - 1}")
        for key in ("labels", "train_mask", "test_mask"):
            if getattr(self, key).shape != (n,):
                raise DataError(f"graph {self.name!r}: {key} must have shape ({n},), got "
                                f"{tuple(getattr(self, key).shape)}")

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]


def _split_per_class(labels: Tensor, generator: torch.Generator, every_other: bool = False) -> Tensor:
    """A test mask of half the nodes of each class (alternate nodes, or a seeded half)."""
    test = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        nodes = (labels == c).nonzero().squeeze(1)
        if not every_other:
            nodes = nodes[torch.randperm(len(nodes), generator=generator)]
        test[nodes[1::2]] = True
    return test


def karate() -> Graph:
    require_pyg()
    from torch_geometric.datasets import KarateClub

    data = KarateClub()[0]
    test = _split_per_class(data.y, torch.Generator(), every_other=True)
    return Graph(data.x.float(), data.edge_index, data.y, ~test, test, [f"community {i}" for i in range(4)], "karate")


def sbm(blocks: int = 4, block_size: int = 100, p_in: float = 0.05, p_out: float = 0.01, features: int = 32,
        feature_noise: float = 4.0, seed: int = 0) -> Graph:
    """A seeded stochastic block model whose node features carry a weak class signal (see the module)."""
    require_pyg()
    from torch_geometric.utils import stochastic_blockmodel_graph

    generator = torch.Generator().manual_seed(seed)
    probs = torch.full((blocks, blocks), p_out).fill_diagonal_(p_in)
    with torch.random.fork_rng(devices=[]):  # it draws from the global generator: the caller's stays as it was
        torch.manual_seed(seed)
        edge_index = stochastic_blockmodel_graph([block_size] * blocks, probs)
    labels = torch.arange(blocks).repeat_interleave(block_size)
    means = torch.randn(blocks, features, generator=generator)
    x = means[labels] + feature_noise * torch.randn(len(labels), features, generator=generator)
    test = _split_per_class(labels, generator)
    return Graph(x, edge_index, labels, ~test, test, [f"block {i}" for i in range(blocks)], "sbm")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what the Planetoid files hold: numpy arrays, scipy sparse matrices and plain
    containers. Anything else (a function, a class that runs code) raises, naming it.

    Every allowed name is matched exactly: from pickle protocol 4 on a name may be a dotted path
    (``_csr.np.lib.format.read_array`` from ``scipy.sparse`` is numpy's ``read_array``), so a
    pattern such as "ends with ``_array``" would let any function reachable from those modules in.
    """

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("collections", "defaultdict"), ("builtins", "list"),
               ("builtins", "dict"), ("builtins", "set"), ("builtins", "int"), ("builtins", "object"),
               ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")}
    SPARSE = ("scipy.sparse", "scipy.sparse.csr", "scipy.sparse._csr", "scipy.sparse.csc", "scipy.sparse._csc",
              "scipy.sparse.lil", "scipy.sparse._lil", "scipy.sparse._arrays")
    SPARSE_TYPES = ("csr_matrix", "csc_matrix", "lil_matrix", "csr_array", "csc_array", "lil_array")

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED or (module in self.SPARSE and name in self.SPARSE_TYPES):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not an array type of the Planetoid format")


def _read_pickle(path: Path):
    try:
        return _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"Planetoid file {path} is missing; data.root must hold the ind.<name>.* files") from None
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as error:
        raise DataError(f"{path}: {error}") from None


def row_normalise(x: Tensor) -> Tensor:
    """Each row divided by its sum (a row summing to 0 stays 0): the official DGI's
    ``preprocess_features`` of the bag-of-words features (PetarV-/DGI ``utils/process.py``)."""
    sums = x.sum(dim=1, keepdim=True)
    return torch.where(sums == 0, torch.zeros_like(x), x / torch.where(sums == 0, torch.ones_like(sums), sums))


def _undirected_edges(graph: dict) -> Tensor:
    """The edges of a Planetoid adjacency dict as the official DGI builds its graph
    (``nx.adjacency_matrix(nx.from_dict_of_lists(graph))``, PetarV-/DGI ``utils/process.py``): undirected, each
    pair once, whichever side lists it and however often (the files repeat some); both directions, sorted.
    Self-loops the file lists are left out: the GCN adds one per node (PyG's reader does the same; the
    official ``A + I`` would count a listed one twice)."""
    pairs = {(min(node, other), max(node, other)) for node, neighbours in graph.items() for other in neighbours
             if node != other}
    if not pairs:
        return torch.zeros(2, 0, dtype=torch.int64)
    one_way = torch.tensor(sorted(pairs), dtype=torch.int64)
    both = torch.cat([one_way, one_way.flip(1)])
    order = torch.argsort(both[:, 0] * (int(both.max()) + 1) + both[:, 1])
    return both[order].T.contiguous()


def planetoid(root: str | Path, name: str = "cora", normalise_features: bool = True) -> Graph:
    """Cora / CiteSeer / PubMed from the Planetoid files in ``root`` (public split), read safely;
    the features row-normalised as the official DGI does (``normalise_features``)."""
    root, prefix = Path(root).expanduser(), name.lower()
    if prefix not in ("cora", "citeseer", "pubmed"):
        raise DataError(f"planetoid name must be cora, citeseer or pubmed, got {name!r}")
    arrays = {}
    for part in ("x", "tx", "allx", "y", "ty", "ally"):
        value = _read_pickle(root / f"ind.{prefix}.{part}")
        arrays[part] = np.asarray(value.todense() if hasattr(value, "todense") else value, dtype=np.float32)
    graph = _read_pickle(root / f"ind.{prefix}.graph")
    index_path = root / f"ind.{prefix}.test.index"
    try:
        test_index = np.array([int(line) for line in index_path.read_text().split()], dtype=np.int64)
    except (FileNotFoundError, ValueError) as error:
        raise DataError(f"{index_path}: {error}") from None
    n_all = len(graph)
    order = np.sort(test_index)
    span = order.max() - order.min() + 1
    tx, ty = np.zeros((span, arrays["tx"].shape[1]), np.float32), np.zeros((span, arrays["ty"].shape[1]), np.float32)
    tx[order - order.min()], ty[order - order.min()] = arrays["tx"], arrays["ty"]   # CiteSeer's isolated nodes
    x, y = np.concatenate([arrays["allx"], tx]), np.concatenate([arrays["ally"], ty])
    x[test_index], y[test_index] = x[order], y[order]
    if x.shape[0] != n_all:
        raise DataError(f"{root}: the graph has {n_all} nodes but the features {x.shape[0]} rows")
    edge_index = _undirected_edges(graph)
    labels = torch.from_numpy(y.argmax(axis=1)).long()
    train_mask = torch.zeros(n_all, dtype=torch.bool)
    train_mask[:len(arrays["y"])] = True
    test_mask = torch.zeros(n_all, dtype=torch.bool)
    test_mask[torch.from_numpy(test_index)] = True
    features = torch.from_numpy(x)
    return Graph(row_normalise(features) if normalise_features else features, edge_index, labels, train_mask,
                 test_mask, [f"class {i}" for i in range(y.shape[1])], prefix)


def load_graph(name: str, root: str | Path | None = None, **options) -> Graph:
    """Graph ``name`` (one of ``GRAPH_DATASETS``)."""
    if name == "karate":
        return karate()
    if name == "sbm":
        return sbm(**options)
    if name == "planetoid":
        if root is None:
            raise DataError("dataset 'planetoid' needs data.root=<folder of the ind.cora.* files>")
        return planetoid(root, **options)
    raise DataError(f"unknown graph dataset {name!r}; known: {', '.join(GRAPH_DATASETS)}")


def graph_from_config(data_config) -> Graph:
    """The graph a run's ``data`` section names (``name``, ``root``, and ``subset`` for planetoid)."""
    return load_graph(data_config.name, data_config.root,
                      **({"name": data_config.subset} if data_config.subset else {}))


@dataclass
class NodeSet:
    """The nodes of one side of the probe: ``inputs`` are node ids ``(n,)`` into ``graph``."""

    graph: Graph
    mask: Tensor
    name: str

    @property
    def inputs(self) -> Tensor:
        return self.mask.nonzero().squeeze(1)

    @property
    def labels(self) -> Tensor:
        return self.graph.labels[self.mask]

    @property
    def classes(self) -> list[str]:
        return self.graph.classes

    @property
    def channels(self) -> int:
        return self.graph.x.shape[1]

    @property
    def size(self) -> int:
        return self.graph.num_nodes

    def __len__(self) -> int:
        return int(self.mask.sum())

    def mean(self) -> Tensor:
        return self.graph.x.mean(dim=0)

    def std(self) -> Tensor:
        return self.graph.x.std(dim=0).clamp(min=1e-6)


class GraphSource:
    """A whole graph as a data source (full-batch training, as DGI): one step per epoch, every step
    and every rank get the whole graph. ``batch().images`` are the node features and
    ``batch().extra["edge_index"]`` the edges; the node ids are the index."""

    kind = "graph"

    def __init__(self, graph: Graph, device: torch.device | str = "cpu") -> None:
        self.graph = graph
        self.device = torch.device(device)
        self.x, self.edge_index = graph.x.to(self.device), graph.edge_index.to(self.device)
        self.dataset = NodeSet(graph, graph.train_mask, graph.name)

    def __len__(self) -> int:
        return self.graph.num_nodes

    def steps_per_epoch(self) -> int:
        return 1

    @property
    def inputs(self) -> Tensor:
        return self.dataset.inputs

    def batch(self, epoch: int, position: int, rank: int) -> ImageBatch:
        index = torch.arange(self.graph.num_nodes, device=self.device)
        return ImageBatch(self.x, index, self.graph.labels.to(self.device), extra={"edge_index": self.edge_index})


__all__ = ["GRAPH_DATASETS", "Graph", "GraphSource", "NodeSet", "graph_from_config", "karate", "load_graph", "planetoid",
           "sbm"]
