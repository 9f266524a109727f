"""Deep Graph Infomax and the graph data: corruption, readout and discriminator on a 3-node graph by hand,
the GCN layer against its formula, the safe Planetoid reader, and a run through the engine."""

import math
import pickle
import sys
from collections import defaultdict

import numpy as np
import pytest
import scipy.sparse as sp
import torch

pytest.importorskip("torch_geometric")

from selfsup import data  # noqa: E402
from selfsup.data.graphs import Graph, planetoid, sbm  # noqa: E402
from selfsup.errors import DataError  # noqa: E402
from selfsup.methods import DGI, Batch, Progress  # noqa: E402
from selfsup.methods.dgi import corrupt  # noqa: E402
from selfsup.nn import GCNEncoder  # noqa: E402

# A path 0 - 1 - 2 with 2-d node features.
X = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
EDGES = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])


def _graph() -> Graph:
    mask = torch.tensor([True, False, True])
    return Graph(X, EDGES, torch.tensor([0, 1, 0]), mask, ~mask, ["a", "b"], "path")


def test_corruption_keeps_the_graph_and_permutes_the_features():
    generator = torch.Generator().manual_seed(0)
    shuffled = corrupt(X, generator)
    order = torch.randperm(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(shuffled, X[order]) and not torch.equal(order, torch.arange(3))
    assert sorted(map(tuple, shuffled.tolist())) == sorted(map(tuple, X.tolist()))   # the same rows, moved


def test_gcn_layer_is_the_normalised_propagation_by_hand():
    encoder = GCNEncoder(2, hidden=3)
    a = torch.tensor([[1.0, 1, 0], [1, 1, 1], [0, 1, 1]])                          # A + I of the path
    d = a.sum(1).rsqrt()
    propagated = d[:, None] * a * d[None] @ X                                         # D^-1/2 (A + I) D^-1/2 X
    linear = propagated @ encoder.conv.lin.weight.T + encoder.conv.bias
    expected = torch.where(linear > 0, linear, 0.25 * linear)                          # PReLU: one slope, 0.25
    assert torch.allclose(encoder(X, EDGES), expected, atol=1e-6)
    assert encoder.act.weight.numel() == 1 and not encoder.conv.bias.any()            # the official layers/gcn.py


def test_discriminator_is_the_official_bilinear_with_its_initialisation():
    torch.manual_seed(0)
    ours = DGI(GCNEncoder(2, hidden=64), graph=_graph()).discriminator
    bound = math.sqrt(6 / (64 * 64 + 64))  # xavier_uniform_ on nn.Bilinear's (1, 64, 64) weight
    assert ours.weight.abs().max() <= bound and ours.weight.abs().max() > 0.95 * bound and ours.bias.item() == 0
    reference = torch.nn.Bilinear(64, 64, 1)
    with torch.no_grad():
        reference.weight.copy_(ours.weight[None])
        ours.bias.fill_(0.3)
        reference.bias.fill_(0.3)
    h, s = torch.randn(5, 64), torch.rand(64)
    assert torch.allclose(ours(h, s), reference(h, s.expand(5, 64)).squeeze(1), atol=1e-5)


def test_readout_discriminator_and_loss_on_three_nodes_by_hand():
    torch.manual_seed(0)
    method = DGI(GCNEncoder(2, hidden=2), graph=_graph(), seed=5)
    with torch.no_grad():
        method.discriminator.weight.copy_(torch.tensor([[1.0, 0.0], [2.0, -1.0]]))
    h = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 1.0]])
    s = DGI.readout(h)
    assert torch.allclose(s, torch.sigmoid(torch.tensor([4 / 3, 2 / 3])))
    scores = method.discriminator(h, s)
    w_s = torch.tensor([s[0], 2 * s[0] - s[1]])                                       # W s
    assert torch.allclose(scores, torch.stack([h[i] @ w_s for i in range(3)]))
    # The training step: positives from the graph, negatives from the step's shuffled features.
    out = method.training_step(Batch([X], torch.arange(3), extra={"edge_index": EDGES}), Progress(7, 10, 1))
    generator = torch.Generator().manual_seed(5 * 1_000_003 + 7)
    with torch.no_grad():
        positive = method.backbone(X, EDGES)
        negative = method.backbone(X[torch.randperm(3, generator=generator)], EDGES)
        summary = torch.sigmoid(positive.mean(0))
        bias = float(method.discriminator.bias)
        pos = [float(positive[i] @ method.discriminator.weight @ summary) + bias for i in range(3)]
        neg = [float(negative[i] @ method.discriminator.weight @ summary) + bias for i in range(3)]
    # BCE(positives, 1) + BCE(negatives, 0): the JSD bound of the paper's eq. 1.
    expected = sum(math.log1p(math.exp(-p)) for p in pos) / 3 + sum(math.log1p(math.exp(n)) for n in neg) / 3
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_eval_encoder_embeds_nodes_by_id():
    method = DGI(GCNEncoder(2, hidden=4), graph=_graph())
    encoder = method.eval_encoder()
    assert torch.equal(encoder(torch.tensor([2, 0])), method.backbone(X, EDGES)[[2, 0]])
    assert "x" not in encoder.state_dict()                                            # the graph is not checkpointed


def test_sbm_is_seeded_and_has_its_blocks():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    one, two = sbm(seed=3), sbm(seed=3)
    assert torch.equal(torch.rand(3), expected)  # the caller's global generator is left as it was
    assert torch.equal(one.edge_index, two.edge_index) and torch.equal(one.x, two.x)
    assert not torch.equal(sbm(seed=4).edge_index, one.edge_index)
    same_block = (one.labels[one.edge_index[0]] == one.labels[one.edge_index[1]]).float().mean().item()
    # p_in 0.05 over 99 partners vs p_out 0.01 over 300: 4.95 / (4.95 + 3.0) of the edges stay inside.
    assert same_block == pytest.approx(4.95 / 7.95, abs=0.05)
    assert int(one.test_mask.sum()) == 200 and not (one.test_mask & one.train_mask).any()


def _write_planetoid(root, payload=None):
    x = sp.csr_matrix(np.eye(3, 4, dtype=np.float32))
    files = {"x": x[:2], "allx": x[:2], "tx": sp.csr_matrix(np.ones((1, 4), np.float32)),
             "y": np.eye(2)[[0, 1]], "ally": np.eye(2)[[0, 1]], "ty": np.eye(2)[[1]],
             "graph": defaultdict(list, {0: [1], 1: [0, 2], 2: [1]})}
    if payload is not None:
        files["x"] = payload
    for name, value in files.items():
        (root / f"ind.cora.{name}").write_bytes(pickle.dumps(value))
    (root / "ind.cora.test.index").write_text("2\n")


def test_planetoid_edges_are_the_official_undirected_graph():
    """PetarV-/DGI builds ``nx.adjacency_matrix(nx.from_dict_of_lists(graph))``: one undirected edge per
    pair however the file lists it. Here a pair listed twice, one listed from one side only and a self-loop
    (left to the GCN's own, one per node)."""
    nx = pytest.importorskip("networkx")
    lists = {0: [1, 1], 1: [0, 2], 2: [2], 3: [0]}
    edges = data.graphs._undirected_edges(lists)
    ours = torch.zeros(4, 4)
    ours[edges[0], edges[1]] += 1
    official = torch.tensor(nx.to_numpy_array(nx.from_dict_of_lists(lists), nodelist=range(4)), dtype=torch.float32)
    assert torch.equal(ours, official.fill_diagonal_(0)) and torch.equal(ours, ours.T)
    assert edges.shape == (2, 6)  # {0,1}, {1,2}, {0,3}, each both ways


def test_planetoid_files_are_read_without_running_code(tmp_path):
    _write_planetoid(tmp_path)
    graph = planetoid(tmp_path, "cora")
    assert graph.num_nodes == 3 and graph.labels.tolist() == [0, 1, 1]
    # Row-normalised as the official execute.py's preprocess_features: the test node's four ones become quarters.
    assert graph.x[2].tolist() == [0.25] * 4 and graph.x[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert planetoid(tmp_path, "cora", normalise_features=False).x[2].tolist() == [1.0] * 4
    assert data.graphs.row_normalise(torch.tensor([[0.0, 0.0], [1.0, 3.0]])).tolist() == [[0.0, 0.0], [0.25, 0.75]]
    assert graph.test_mask.tolist() == [False, False, True]
    assert graph.train_mask.tolist() == [True, True, False]
    assert sorted(map(tuple, graph.edge_index.T.tolist())) == [(0, 1), (1, 0), (1, 2), (2, 1)]

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    _write_planetoid(tmp_path, payload=Exploit())
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        planetoid(tmp_path, "cora")
    with pytest.raises(DataError, match="ind.cora.x is missing|missing"):
        planetoid(tmp_path / "nowhere", "cora")


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_geometric", None)
    with pytest.raises(DataError, match=r"pip install 'selfsup\[graph\]'"):
        data.graphs.karate()


def test_dgi_trains_through_the_engine_on_karate(tmp_path, monkeypatch, recheck_knn):
    from selfsup.config import load_config
    from selfsup.engine import pretrain

    cfg = load_config("recipes/dgi_sbm.yaml", ["data.name=karate", "train.epochs=20", "train.knn_every=10",
                                              "backbone.width=2", f"train.out_dir={tmp_path}", "train.progress=false",
                                              "eval.plots=false"])
    pretrain(cfg)
    import json

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["data"] == "karate" and results["steps"] == 20
    reported, by_hand = recheck_knn(tmp_path)  # the checkpoint's nodes, embedded afresh and voted by hand
    assert reported == pytest.approx(by_hand, abs=1e-6)
    embeddings = np.load(tmp_path / "test_embeddings.npy")
    assert embeddings.shape == (int(data.graphs.karate().test_mask.sum()), 32)
    from selfsup import cli

    monkeypatch.setattr(cli.common, "tune_allocator", lambda: None)  # process-wide malloc settings: the CLI's, not a test's
    main = cli.main  # the command line rebuilds the encoder on the same graph: the same probe

    assert main(["evaluate", "linear", str(tmp_path / "checkpoints" / "last.ckpt")]) == 0
    again = json.loads((tmp_path / "evaluations" / "linear.json").read_text())["accuracy"]
    assert again == pytest.approx(results["linear_accuracy"])
