"""Self-supervised and metric-learning losses as pure functions on tensors.

Conventions (see DESIGN.md, "Loss contract"):

* Embeddings are `(N, D)` floating tensors. Unless a docstring says otherwise,
  inputs are L2-normalised, similarities are divided by `temperature`, and the
  result is the mean over anchors as a 0-d tensor.
* float16 / bfloat16 inputs are computed in float32 and the loss is float32;
  float64 stays float64 (so `torch.autograd.gradcheck` works).
* Bad input (wrong rank or shape, mismatched batch sizes, labels of the wrong
  length, temperature <= 0, NaN/Inf values) raises ValueError naming the
  argument.

Distributed semantics of `nt_xent`, `info_nce`, `clip` and `supcon` with
`gather=True` under torch.distributed (W ranks, N local samples each): each
rank's loss is the mean over *its own* anchors, scored against the candidates
of *all* ranks, gathered with `selfsup.distributed.gather`. The gather's
backward sums the gradients every rank sends back, so each rank's embeddings
receive W times the gradient of the single-process loss on the concatenated
`W * N` batch, and DDP's mean over ranks divides the W back out: training under
DDP follows exactly the single-process gradient, and the mean of the ranks'
losses equals the single-process loss. On one process `gather` changes nothing.
(For `supcon` this holds exactly when every anchor has a positive somewhere in
the global batch.)
"""

from selfsup.losses._common import finite_checks
from selfsup.losses.contrastive import (clip, cpc, info_nce, invaspread, margin_triplet, n_pair, nt_logistic,
                                        nt_xent, one_sided_nt_xent, supcon)
from selfsup.losses.estimators import jsd_mi, local_global_info_nce, nce, nce_log_normalizer
from selfsup.losses.distillation import DINOLoss, dino, negative_cosine
from selfsup.losses.metric import (batch_hard_triplet, pixelwise_contrastive, prototypical, semi_hard_triplet,
                                  triplet)
from selfsup.losses.temporal import (multi_view_time_contrastive, r3m_language_reward, r3m_time_contrastive,
                                    time_contrastive_triplet)

__all__ = [
    "DINOLoss",
    "batch_hard_triplet",
    "clip",
    "cpc",
    "dino",
    "finite_checks",
    "info_nce",
    "invaspread",
    "jsd_mi",
    "local_global_info_nce",
    "margin_triplet",
    "multi_view_time_contrastive",
    "n_pair",
    "negative_cosine",
    "nce",
    "nce_log_normalizer",
    "nt_logistic",
    "pixelwise_contrastive",
    "one_sided_nt_xent",
    "nt_xent",
    "prototypical",
    "r3m_language_reward",
    "r3m_time_contrastive",
    "semi_hard_triplet",
    "supcon",
    "time_contrastive_triplet",
    "triplet",
]
