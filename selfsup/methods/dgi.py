"""Deep Graph Infomax (Veličković et al. 2019)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from selfsup import losses
from selfsup.data.graphs import Graph
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.nn import GCNEncoder


class NodeEncoder(nn.Module):
    """The embeddings of a fixed graph's nodes, by node id: ``(n,)`` int64 ids -> ``(n, hidden)`` (the
    whole graph is encoded, then the rows taken; message passing needs every node)."""

    def __init__(self, encoder: GCNEncoder, graph: Graph) -> None:
        super().__init__()
        self.encoder, self.out_dim = encoder, encoder.out_dim
        self.register_buffer("x", graph.x.clone(), persistent=False)
        self.register_buffer("edge_index", graph.edge_index.clone(), persistent=False)

    @property
    def mean(self) -> Tensor:
        """No input normalisation (what a rebuilt encoder is given): zeros."""
        return torch.zeros(self.x.shape[1])

    @property
    def std(self) -> Tensor:
        return torch.ones(self.x.shape[1])

    def forward(self, nodes: Tensor) -> Tensor:
        return self.encoder(self.x, self.edge_index)[nodes]


def corrupt(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """DGI's corruption: the same graph with the rows of the feature matrix shuffled."""
    return x[torch.randperm(x.shape[0], generator=generator, device=x.device)]


class Bilinear(nn.Module):
    """The discriminator ``D(h_i, s) = h_i^T W s + b``: the official ``nn.Bilinear(n_h, n_h, 1)``
    (PetarV-/DGI ``layers/discriminator.py``) with its initialisation, Xavier-uniform on the 3-D
    weight ``(1, n_h, n_h)``, whose fans ``n_h²`` and ``n_h`` give the bound ``sqrt(6 / (n_h² + n_h))``
    (about 16x below a 2-D Xavier at n_h = 512), and a zero bias. One summary for every node, so
    ``W s`` is computed once."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        weight = torch.empty(1, dim, dim)
        nn.init.xavier_uniform_(weight)
        self.weight = nn.Parameter(weight[0])
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, h: Tensor, summary: Tensor) -> Tensor:
        return h @ (self.weight @ summary) + self.bias


class DGI(MethodBase):
    """Maximise the mutual information between node embeddings and a summary of the whole graph.

    Per step (full batch: the whole graph, section 3.3 of the paper)::

        H = E(X, A)                          # GCNEncoder: positives
        H~ = E(X[perm], A)                   # corruption: features shuffled over the nodes, same edges
        s = sigmoid(mean_i H_i)              # the readout
        loss = jsd_mi(D(H_i, s), D(H~_j, s)) # = BCE(positives, 1) + BCE(negatives, 0)

    The permutation is drawn per step from ``seed`` and the step, so every DDP rank corrupts alike.
    Node embeddings ``H`` (of the uncorrupted graph) are the representation: the probe is logistic
    regression on the training nodes' embeddings, scored on the test nodes.

    Args:
        backbone: a :class:`GCNEncoder` (``backbone.name: gcn``).
        graph: the graph (its features and edges; the engine passes it).
        seed: seeds the corruptions.
    """

    data_kind: ClassVar[str] = "graph"
    views_needed: ClassVar[tuple[int, int | None]] = (1, 1)
    needs_graph: ClassVar[bool] = True

    def __init__(self, backbone: GCNEncoder, *, graph: Graph, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(backbone, GCNEncoder):
            raise ValueError(f"DGI needs the graph encoder (backbone.name: gcn), got {type(backbone).__name__}")
        self.backbone, self.graph, self.seed = backbone, graph, seed
        self.discriminator = Bilinear(backbone.out_dim)

    def augmentation(self, image_size: int) -> None:
        """No augmentation: the corruption is the method's."""
        return None

    @staticmethod
    def readout(h: Tensor) -> Tensor:
        """``sigmoid(mean of the node embeddings)``."""
        return torch.sigmoid(h.mean(dim=0))

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        if not batch.extra or "edge_index" not in batch.extra:
            raise ValueError("DGI needs the graph's edges: batch.extra['edge_index']")
        x, edge_index = batch.views[0], batch.extra["edge_index"]
        generator = torch.Generator(device=x.device).manual_seed(self.seed * 1_000_003 + progress.step)
        positive = self.backbone(x, edge_index)
        negative = self.backbone(corrupt(x, generator), edge_index)
        summary = self.readout(positive)
        return {"loss": losses.jsd_mi(self.discriminator(positive, summary), self.discriminator(negative, summary))}

    def eval_encoder(self) -> nn.Module:
        """Node ids -> embeddings of the uncorrupted graph."""
        return NodeEncoder(self.backbone, self.graph)


__all__ = ["DGI", "Bilinear", "NodeEncoder", "corrupt"]
