"""Node-classification baselines on a graph recipe's data that a DGI run must beat.

The same probe as the run (multinomial logistic regression, L2 chosen on a held-out split of the
training nodes, and weighted kNN), on the same training / test nodes, of:

* raw node features;
* random weights: the recipe's GCN encoder with its random initialisation (same seed as a run), whose
  embeddings already mix each node's features with its neighbours' (the DGI paper's point that a
  random GCN is a strong baseline).

    .venv/bin/python benchmarks/graph_baselines.py recipes/dgi_sbm.yaml
"""

from __future__ import annotations

import time

import torch

from selfsup import data, evaluate
from selfsup.engine import build_method

from _baseline import probe_all, recipe_from_command_line, report


def main() -> None:
    cfg = recipe_from_command_line(__doc__)
    graph = data.graph_from_config(cfg.data)
    train, test = data.NodeSet(graph, graph.train_mask, graph.name), data.NodeSet(graph, graph.test_mask, graph.name)
    start = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    method = build_method(cfg, in_channels=train.channels, image_size=train.size, mean=train.mean().tolist(),
                          std=train.std().tolist(), num_samples=len(train), graph=graph)
    encoder = method.eval_encoder()
    random = tuple(evaluate.extract_features(encoder, s.inputs, kind="graph") for s in (train, test))
    features = {"raw_features": (graph.x[train.inputs], graph.x[test.inputs]), "random_weights": random}
    results = probe_all(cfg, features, train.labels, test.labels)
    report(**{"data": graph.name, "nodes": graph.num_nodes, "edges": graph.edge_index.shape[1],
              "train_nodes": len(train), "test_nodes": len(test),
              "chance": round(1 / len(graph.classes), 4), **results,
              "seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    main()
