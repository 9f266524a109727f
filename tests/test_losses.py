"""Losses against independent references: double loops over the papers' formulas,
torch reference functions, properties and float64 gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup import losses


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _cos(a, b):
    return float(a @ b) / (float(a.norm()) * float(b.norm()))


# ----------------------------------------------------------------------------- nt_xent


def _nt_xent_loop(z1, z2, t, decoupled=False):
    z = torch.cat([z1, z2])
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        denom = 0.0
        for k in range(2 * n):
            if k == i or (decoupled and k == p):
                continue
            denom += math.exp(_cos(z[i], z[k]) / t)
        total += -_cos(z[i], z[p]) / t + math.log(denom)
    return total / (2 * n)


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("t", [0.5, 0.1])
def test_nt_xent_matches_double_loop(decoupled, t):
    z1, z2 = _rand(5, 3, seed=1), _rand(5, 3, seed=2)
    got = losses.nt_xent(z1, z2, t, decoupled=decoupled)
    assert got.item() == pytest.approx(_nt_xent_loop(z1, z2, t, decoupled), rel=1e-10)


def _plain_nt_xent(z1, z2, t, decoupled):
    """The full-matrix form: masked logits and F.cross_entropy (the positive masked too when decoupled)."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T / t).fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    if not decoupled:
        return F.cross_entropy(logits, target)
    rows = torch.arange(2 * n)
    positive = logits[rows, target]
    return (torch.logsumexp(logits.index_put((rows, target), torch.tensor(float("-inf"))), dim=1) - positive).mean()


# t = 0.2 and 0.05 take the symmetric strip kernel, t = 0.02 (|logit| up to 50) the shifted blockwise one.
@pytest.mark.parametrize("t", [0.2, 0.05, 0.02])
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("keep_exps", [True, False])
def test_nt_xent_matches_cross_entropy_at_scale_with_blocks(monkeypatch, t, decoupled, keep_exps):
    # A small block budget forces many strips (2 rows each), so diagonal and partner entries fall
    # in different strips; with keep_exps False backward recomputes the strips.
    monkeypatch.setattr(losses._common, "_BLOCK_ELEMENTS", 300)
    if not keep_exps:
        monkeypatch.setattr(losses._common, "_KEPT_EXP_ELEMENTS", 0)
    z1 = _rand(70, 16, seed=3, dtype=torch.float32).requires_grad_()
    z2 = _rand(70, 16, seed=4, dtype=torch.float32).requires_grad_()
    got = losses.nt_xent(z1, z2, t, decoupled=decoupled)
    got.backward()
    g1, g2 = z1.grad.clone(), z2.grad.clone()
    z1.grad = z2.grad = None
    ref = _plain_nt_xent(z1, z2, t, decoupled)
    ref.backward()
    assert got.item() == pytest.approx(ref.item(), abs=1e-5)
    torch.testing.assert_close(g1, z1.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g2, z2.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("keep_exps", [True, False])
def test_nt_xent_gradcheck_over_strips(monkeypatch, decoupled, keep_exps):
    monkeypatch.setattr(losses._common, "_BLOCK_ELEMENTS", 20)  # 2 rows per strip of the 10 x 10 matrix
    if not keep_exps:
        monkeypatch.setattr(losses._common, "_KEPT_EXP_ELEMENTS", 0)
    z1, z2 = _rand(5, 3, seed=9).requires_grad_(), _rand(5, 3, seed=10).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: losses.nt_xent(a, b, 0.4, decoupled=decoupled), (z1, z2))


def test_nt_xent_learnable_temperature_gets_its_gradient():
    z1, z2 = _rand(4, 3, seed=11).requires_grad_(), _rand(4, 3, seed=12).requires_grad_()
    t = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    assert losses.nt_xent(z1, z2, t).item() == pytest.approx(_nt_xent_loop(z1.detach(), z2.detach(), 0.5), rel=1e-10)
    assert torch.autograd.gradcheck(lambda a, b, temp: losses.nt_xent(a, b, temp), (z1, z2, t))


def test_nt_xent_properties():
    z1, z2 = _rand(6, 4, seed=5), _rand(6, 4, seed=6)
    base = losses.nt_xent(z1, z2)
    assert losses.nt_xent(3.0 * z1, 0.5 * z2).item() == pytest.approx(base.item(), rel=1e-12)
    assert losses.nt_xent(z2, z1).item() == pytest.approx(base.item(), rel=1e-12)
    closer = losses.nt_xent(z1, 0.5 * z2 + 0.5 * z1)
    assert closer < base
    assert losses.nt_xent(z1, z2, gather=False).item() == base.item()


@pytest.mark.parametrize("decoupled", [False, True])
def test_nt_xent_gradcheck(decoupled):
    z1, z2 = _rand(4, 3, seed=7).requires_grad_(), _rand(4, 3, seed=8).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: losses.nt_xent(a, b, 0.3, decoupled=decoupled), (z1, z2))


# ----------------------------------------------------------------------------- info_nce


def _info_nce_loop(q, k, negs, t):
    total = 0.0
    for i in range(q.shape[0]):
        pos = math.exp(_cos(q[i], k[i]) / t)
        pool = negs if negs is not None else [k[j] for j in range(k.shape[0]) if j != i]
        total += -math.log(pos / (pos + sum(math.exp(_cos(q[i], n) / t) for n in pool)))
    return total / q.shape[0]


@pytest.mark.parametrize("with_queue", [False, True])
def test_info_nce_matches_double_loop(with_queue):
    q, k = _rand(4, 5, seed=9), _rand(4, 5, seed=10)
    negs = _rand(7, 5, seed=11) if with_queue else None
    got = losses.info_nce(q, k, negs, temperature=0.2)
    assert got.item() == pytest.approx(_info_nce_loop(q, k, negs, 0.2), rel=1e-10)


def test_info_nce_batch_matches_cross_entropy_and_properties():
    q, k = _rand(6, 5, seed=12), _rand(6, 5, seed=13)
    ref = F.cross_entropy(F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / 0.07, torch.arange(6))
    assert losses.info_nce(q, k).item() == pytest.approx(ref.item(), rel=1e-10)
    assert losses.info_nce(2 * q, 7 * k).item() == pytest.approx(ref.item(), rel=1e-10)
    assert losses.info_nce(q, 0.3 * k + 0.7 * q) < losses.info_nce(q, k)


@pytest.mark.parametrize("with_queue", [False, True])
def test_info_nce_gradcheck(with_queue):
    q, k = _rand(3, 4, seed=14).requires_grad_(), _rand(3, 4, seed=15).requires_grad_()
    negs = _rand(5, 4, seed=16).requires_grad_()
    if with_queue:
        assert torch.autograd.gradcheck(lambda a, b, c: losses.info_nce(a, b, c, 0.5), (q, k, negs))
    else:
        assert torch.autograd.gradcheck(lambda a, b: losses.info_nce(a, b, None, 0.5), (q, k))


# ----------------------------------------------------------------------------- clip, supcon


def test_clip_matches_double_loop_and_is_symmetric():
    img, txt = _rand(5, 4, seed=30), _rand(5, 4, seed=31)
    scale = 3.0
    total = 0.0
    for i in range(5):
        row = [scale * _cos(img[i], txt[j]) for j in range(5)]
        col = [scale * _cos(txt[i], img[j]) for j in range(5)]
        total += 0.5 * (-row[i] + math.log(sum(map(math.exp, row))))
        total += 0.5 * (-col[i] + math.log(sum(map(math.exp, col))))
    got = losses.clip(img, txt, scale)
    assert got.item() == pytest.approx(total / 5, rel=1e-10)
    assert losses.clip(txt, img, scale).item() == pytest.approx(got.item(), rel=1e-12)
    assert losses.clip(img, 0.5 * txt + 0.5 * img, scale) < got


def test_clip_gradcheck_includes_logit_scale():
    img, txt = _rand(4, 3, seed=32).requires_grad_(), _rand(4, 3, seed=33).requires_grad_()
    scale = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, s: losses.clip(a, b, s), (img, txt, scale))


def _supcon_loop(x, y, t):
    n, total, count = len(y), 0.0, 0
    for i in range(n):
        positives = [p for p in range(n) if p != i and y[p] == y[i]]
        if not positives:
            continue
        denom = sum(math.exp(_cos(x[i], x[a]) / t) for a in range(n) if a != i)
        total += -sum(math.log(math.exp(_cos(x[i], x[p]) / t) / denom) for p in positives) / len(positives)
        count += 1
    return total / count


def test_supcon_matches_double_loop_with_a_singleton_class():
    x, y = _rand(7, 4, seed=34), torch.tensor([3, 3, 1, 1, 1, 8, 3])  # class 8 has no positive
    assert losses.supcon(x, y, 0.2).item() == pytest.approx(_supcon_loop(x, y, 0.2), rel=1e-10)
    assert losses.supcon(5 * x, y, 0.2).item() == pytest.approx(_supcon_loop(x, y, 0.2), rel=1e-10)


def test_supcon_with_distinct_pairs_equals_nt_xent():
    z1, z2 = _rand(5, 4, seed=35), _rand(5, 4, seed=36)
    labels = torch.arange(5).repeat(2)
    got = losses.supcon(torch.cat([z1, z2]), labels, 0.3)
    assert got.item() == pytest.approx(losses.nt_xent(z1, z2, 0.3).item(), rel=1e-10)


def test_supcon_gradcheck():
    x = _rand(6, 3, seed=37).requires_grad_()
    y = torch.tensor([0, 1, 0, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda a: losses.supcon(a, y, 0.5), (x,))


# ----------------------------------------------------------------------------- n_pair, cpc, nce, jsd_mi


def test_n_pair_matches_sohn_formula():
    a, p = _rand(5, 3, seed=40), _rand(5, 3, seed=41)
    ref = sum(
        math.log(1 + sum(math.exp(float(a[i] @ p[j] - a[i] @ p[i])) for j in range(5) if j != i)) for i in range(5)
    ) / 5
    assert losses.n_pair(a, p).item() == pytest.approx(ref, rel=1e-10)
    assert torch.autograd.gradcheck(losses.n_pair, (a.requires_grad_(), p.requires_grad_()))


def test_n_pair_with_shared_classes_masks_them_or_spreads_targets_as_tf_npairs_loss():
    a, p = _rand(5, 3, seed=45), _rand(5, 3, seed=46)
    y = torch.tensor([0, 1, 0, 2, 1])
    logits = [[float(a[i] @ p[j]) for j in range(5)] for i in range(5)]
    masked = soft = 0.0
    for i in range(5):
        kept = [logits[i][j] for j in range(5) if j == i or y[j] != y[i]]
        masked += math.log(sum(math.exp(v) for v in kept)) - logits[i][i]
        log_z = math.log(sum(math.exp(v) for v in logits[i]))
        same = [j for j in range(5) if y[j] == y[i]]  # TF: targets 1/|same| on the class's columns
        soft += sum(log_z - logits[i][j] for j in same) / len(same)
    assert losses.n_pair(a, p, labels=y).item() == pytest.approx(masked / 5, rel=1e-10)
    assert losses.n_pair(a, p, labels=y, same_class="soft").item() == pytest.approx(soft / 5, rel=1e-10)
    distinct = torch.arange(5)  # every class once: both are the paper's loss
    assert losses.n_pair(a, p, labels=distinct, same_class="soft").item() == pytest.approx(
        losses.n_pair(a, p).item(), rel=1e-10)
    with pytest.raises(ValueError, match="same_class"):
        losses.n_pair(a, p, labels=y, same_class="hard")


def test_cpc_matches_cross_entropy_per_group():
    pred, codes = _rand(3, 4, 5, seed=42), _rand(3, 4, 5, seed=43)
    per_group = [F.cross_entropy(pred[s] @ codes[s].T / 0.5, torch.arange(4)) for s in range(3)]
    assert losses.cpc(pred, codes, 0.5).item() == pytest.approx(float(sum(per_group) / 3), rel=1e-10)
    assert losses.cpc(pred[0], codes[0], 0.5).item() == pytest.approx(per_group[0].item(), rel=1e-10)
    assert losses.cpc(pred[0], pred[0] * 3 + codes[0], 0.5) < losses.cpc(pred[0], codes[0], 0.5)
    assert torch.autograd.gradcheck(lambda a, b: losses.cpc(a, b, 0.5), (pred.requires_grad_(), codes))


def test_nce_matches_paper_probabilities():
    scores = torch.rand(4, 6, generator=torch.Generator().manual_seed(44), dtype=torch.float64) * 2 - 1
    n_bank, t, z = 100, 0.5, 30.0
    m = scores.shape[1] - 1
    total = 0.0
    for i in range(4):
        for k in range(m + 1):
            prob = math.exp(float(scores[i, k]) / t) / z
            h = prob / (prob + m / n_bank)
            total += -math.log(h) if k == 0 else -math.log(1 - h)
    got = losses.nce(scores, 1 / n_bank, t, log_normalizer=math.log(z))
    assert got.item() == pytest.approx(total / 4, rel=1e-10)
    assert torch.autograd.gradcheck(
        lambda s: losses.nce(s, 1 / n_bank, t, log_normalizer=math.log(z)), (scores.requires_grad_(),)
    )


def test_nce_log_normalizer_is_the_monte_carlo_estimate():
    scores = torch.rand(4, 6, generator=torch.Generator().manual_seed(45), dtype=torch.float64) * 2 - 1
    n_bank, t = 1000, 0.07
    z = n_bank * sum(math.exp(float(v) / t) for v in scores[:, 1:].flatten()) / scores[:, 1:].numel()
    assert losses.nce_log_normalizer(scores, 1 / n_bank, t).item() == pytest.approx(math.log(z), rel=1e-10)
    default = losses.nce(scores, 1 / n_bank, t)
    assert default.item() == pytest.approx(losses.nce(scores, 1 / n_bank, t, log_normalizer=math.log(z)).item())


def test_jsd_mi_matches_formula_and_bce():
    pos, neg = _rand(6, seed=46), _rand(3, 4, seed=47)
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    ref = sum(softplus(-float(v)) for v in pos) / 6 + sum(softplus(float(v)) for v in neg.flatten()) / 12
    got = losses.jsd_mi(pos, neg)
    assert got.item() == pytest.approx(ref, rel=1e-10)
    bce = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)) + F.binary_cross_entropy_with_logits(
        neg, torch.zeros_like(neg)
    )
    assert got.item() == pytest.approx(bce.item(), rel=1e-10)
    assert losses.jsd_mi(pos + 1, neg - 1) < got


# ----------------------------------------------------------------------------- triplet family, prototypical


def test_triplet_equals_torch_triplet_margin_loss():
    a, p, n = (_rand(6, 4, seed=s).requires_grad_() for s in (50, 51, 52))
    got = losses.triplet(a, p, n, margin=0.7)
    ref = F.triplet_margin_loss(a, p, n, margin=0.7)
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got, (a, p, n)), torch.autograd.grad(ref, (a, p, n)))


def test_squared_triplet_is_facenets_eq_1():
    # FaceNet (davidsandberg/facenet triplet_loss): max(0, ||a - p||^2 - ||a - n||^2 + alpha), alpha 0.2.
    a, p, n = (_rand(6, 4, seed=s).requires_grad_() for s in (50, 51, 52))
    got = losses.triplet(a, p, n, margin=0.2, squared=True)
    ref = torch.nn.TripletMarginWithDistanceLoss(
        distance_function=lambda u, v: F.pairwise_distance(u, v).square(), margin=0.2)(a, p, n)
    by_hand = sum(max(0.0, float((a[i] - p[i] + 1e-6).square().sum() - (a[i] - n[i] + 1e-6).square().sum()) + 0.2)
                  for i in range(6)) / 6
    assert got.item() == pytest.approx(ref.item(), rel=1e-12) and got.item() == pytest.approx(by_hand, rel=1e-9)


def _dist(x, i, j, squared=False):
    distance = float((x[i] - x[j]).norm())
    return distance ** 2 if squared else distance


@pytest.mark.parametrize("squared", [False, True])
def test_batch_hard_triplet_matches_loop(squared):
    x, y = _rand(8, 3, seed=53), torch.tensor([0, 0, 0, 1, 1, 2, 2, 5])  # label 5: no positive
    total, count = 0.0, 0
    for i in range(8):
        pos = [_dist(x, i, j, squared) for j in range(8) if j != i and y[j] == y[i]]
        neg = [_dist(x, i, j, squared) for j in range(8) if y[j] != y[i]]
        if pos and neg:
            total += max(0.0, max(pos) - min(neg) + 0.5)
            count += 1
    assert losses.batch_hard_triplet(x, y, 0.5, squared=squared).item() == pytest.approx(total / count, rel=1e-10)
    assert torch.autograd.gradcheck(lambda e: losses.batch_hard_triplet(e, y, 0.5, squared=squared),
                                    (x.requires_grad_(),))


@pytest.mark.parametrize("squared", [False, True])
def test_semi_hard_triplet_matches_loop(squared):
    x, y = _rand(9, 3, seed=54), torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    total, count = 0.0, 0
    for a in range(9):
        negs = [_dist(x, a, n, squared) for n in range(9) if y[n] != y[a]]
        for p in range(9):
            if p == a or y[p] != y[a]:
                continue
            d_ap = _dist(x, a, p, squared)
            farther = [d for d in negs if d > d_ap]
            d_an = min(farther) if farther else max(negs)
            total += max(0.0, d_ap - d_an + 1.0)
            count += 1
    got = losses.semi_hard_triplet(x, y, 1.0, squared=squared)
    assert got.item() == pytest.approx(total / count, rel=1e-10)
    assert torch.autograd.gradcheck(lambda e: losses.semi_hard_triplet(e, y, 1.0, squared=squared),
                                    (x.requires_grad_(),))


def test_semi_hard_triplet_without_any_negative_costs_each_pair_its_distance_plus_the_margin():
    # One label: no anchor has a negative. TF's triplet_semihard_loss takes masked_maximum over the empty mask,
    # the row's smallest distance (the anchor's own, 0), and counts every positive pair: mean(d_ap) + margin.
    x, y = _rand(4, 3, seed=57), torch.zeros(4, dtype=torch.long)
    for squared in (False, True):
        pairs = [_dist(x, a, p, squared) for a in range(4) for p in range(4) if p != a]
        got = losses.semi_hard_triplet(x, y, 0.3, squared=squared).item()
        assert got == pytest.approx(sum(pairs) / len(pairs) + 0.3, rel=1e-6)


def test_prototypical_matches_loop_with_arbitrary_labels():
    support, query = _rand(6, 3, seed=55), _rand(4, 3, seed=56)
    s_labels, q_labels = torch.tensor([7, 2, 7, 9, 2, 9]), torch.tensor([9, 2, 7, 9])
    classes = [2, 7, 9]
    protos = {c: sum(support[i] for i in range(6) if s_labels[i] == c) / 2 for c in classes}
    total = 0.0
    for q in range(4):
        logits = {c: -float((query[q] - protos[c]).pow(2).sum()) for c in classes}
        total += -logits[int(q_labels[q])] + math.log(sum(math.exp(v) for v in logits.values()))
    got = losses.prototypical(support, s_labels, query, q_labels)
    assert got.item() == pytest.approx(total / 4, rel=1e-10)
    assert torch.autograd.gradcheck(
        lambda s, q: losses.prototypical(s, s_labels, q, q_labels), (support.requires_grad_(), query.requires_grad_())
    )


# ----------------------------------------------------------------------------- negative_cosine, dino


def test_negative_cosine_matches_cosine_similarity_and_stops_target_gradient():
    p, z = _rand(5, 4, seed=60).requires_grad_(), _rand(5, 4, seed=61).requires_grad_()
    got = losses.negative_cosine(p, z)
    assert got.item() == pytest.approx(-F.cosine_similarity(p, z).mean().item(), rel=1e-12)
    got.backward()
    assert z.grad is None and p.grad is not None
    assert losses.negative_cosine(3 * p, 0.1 * z).item() == pytest.approx(got.item(), rel=1e-12)


def _dino_loop(student, teacher, center, ts, tt):
    total, pairs = 0.0, 0
    for v in range(teacher.shape[0]):
        for w in range(student.shape[0]):
            if v == w:
                continue
            for b in range(student.shape[1]):
                t = torch.softmax((teacher[v, b] - center) / tt, 0)
                s = torch.log_softmax(student[w, b] / ts, 0)
                total += -float((t * s).sum().detach()) / student.shape[1]
            pairs += 1
    return total / pairs


def test_dino_matches_loop_and_teacher_gets_no_gradient():
    student, teacher = _rand(4, 3, 6, seed=62).requires_grad_(), _rand(2, 3, 6, seed=63).requires_grad_()
    center = _rand(6, seed=64)
    got = losses.dino(student, teacher, center, 0.1, 0.04)
    assert got.item() == pytest.approx(_dino_loop(student, teacher, center, 0.1, 0.04), rel=1e-10)
    got.backward()
    assert teacher.grad is None
    assert torch.autograd.gradcheck(lambda s: losses.dino(s, teacher, center, 0.2, 0.1), (student,))


def test_dino_loss_module_updates_ema_center():
    criterion = losses.DINOLoss(6, center_momentum=0.9).double()
    student, teacher = _rand(4, 3, 6, seed=65), _rand(2, 3, 6, seed=66)
    first = criterion(student, teacher)
    assert first.item() == pytest.approx(_dino_loop(student, teacher, torch.zeros(6), 0.1, 0.04), rel=1e-10)
    torch.testing.assert_close(criterion.center, 0.1 * teacher.reshape(-1, 6).mean(0))


# ----------------------------------------------------------------------------- stability and errors


def _large(n, d, seed):
    return 1e4 * F.normalize(_rand(n, d, seed=seed, dtype=torch.float32), dim=1)


STABILITY_CASES = {
    "nt_xent": lambda a, b: losses.nt_xent(a, b, 0.01),
    "nt_xent_decoupled": lambda a, b: losses.nt_xent(a, b, 0.01, decoupled=True),
    "info_nce": lambda a, b: losses.info_nce(a, b, None, 0.01),
    "info_nce_queue": lambda a, b: losses.info_nce(a, b, torch.cat([a, b]).detach(), 0.01),
    "clip": lambda a, b: losses.clip(a, b, 100.0),
    "supcon": lambda a, b: losses.supcon(torch.cat([a, b]), torch.arange(a.shape[0]).repeat(2), 0.01),
    "negative_cosine": losses.negative_cosine,
    "n_pair": lambda a, b: losses.n_pair(a / 1e4, b / 1e4),
    "cpc": lambda a, b: losses.cpc(a / 1e4, b / 1e4, 0.01),
    "nce": lambda a, b: losses.nce(torch.tanh(a / 1e4 + b.flip(0) / 1e4), 1e-4, 0.01),
    "triplet": lambda a, b: losses.triplet(a, b, b.flip(0)),
    "batch_hard_triplet": lambda a, b: losses.batch_hard_triplet(a, torch.arange(a.shape[0]) % 4),
    "semi_hard_triplet": lambda a, b: losses.semi_hard_triplet(a, torch.arange(a.shape[0]) % 4),
    "dino": lambda a, b: losses.dino(a.view(4, 4, 8), b.view(4, 4, 8)[:2], torch.zeros(8), 0.01, 0.01),
    "jsd_mi": lambda a, b: losses.jsd_mi(a, b),
    "prototypical": lambda a, b: losses.prototypical(a / 1e4, torch.arange(16) % 4, b / 1e4, torch.arange(16) % 4),
}


@pytest.mark.parametrize("name", sorted(STABILITY_CASES))
def test_low_temperature_and_huge_norms_are_finite(name):
    a, b = _large(16, 8, 20).requires_grad_(), _large(16, 8, 21).requires_grad_()
    loss = STABILITY_CASES[name](a, b)
    loss.backward()
    assert torch.isfinite(loss) and a.grad is not None
    # b is a stop-gradient target for some losses (negative_cosine, dino, the mined triplets' labels).
    assert all(torch.isfinite(g).all() for g in (a.grad, b.grad) if g is not None)


@pytest.mark.parametrize("name", sorted(STABILITY_CASES))
def test_bf16_inputs_are_computed_in_float32(name):
    a, b = _rand(16, 8, seed=22, dtype=torch.float32), _rand(16, 8, seed=23, dtype=torch.float32)
    a16, b16 = a.bfloat16(), b.bfloat16()
    got = STABILITY_CASES[name](a16, b16)
    assert got.dtype == torch.float32
    # Same bf16 values upcast by hand: only float32 rounding separates the two.
    assert got.item() == pytest.approx(STABILITY_CASES[name](a16.float(), b16.float()).item(), abs=1e-5)


ERROR_CASES = [
    (lambda: losses.nt_xent(torch.randn(4, 3), torch.randn(5, 3)), "z1 and z2"),
    (lambda: losses.nt_xent(torch.randn(4), torch.randn(4)), "z1"),
    (lambda: losses.nt_xent(torch.randn(4, 3), torch.randn(4, 3), 0.0), "temperature"),
    (lambda: losses.nt_xent(torch.randn(4, 3), torch.full((4, 3), float("nan"))), "z2"),
    (lambda: losses.info_nce(torch.randn(4, 3), torch.randn(4, 3), torch.randn(6, 2)), "negatives"),
    (lambda: losses.info_nce(torch.randn(4, 3), torch.randn(4, 3), temperature=-1.0), "temperature"),
    (lambda: losses.info_nce(torch.randn(4, 3), torch.randn(3, 3)), "query and key"),
    (lambda: losses.clip(torch.randn(4, 3), torch.randn(4, 3), 0.0), "logit_scale"),
    (lambda: losses.supcon(torch.randn(4, 3), torch.tensor([0, 1, 0])), "labels"),
    (lambda: losses.supcon(torch.randn(4, 3), torch.tensor([0.0, 1, 0, 1])), "labels"),
    (lambda: losses.supcon(torch.randn(4, 3), torch.arange(4), temperature=0), "temperature"),
    (lambda: losses.n_pair(torch.randn(4, 3), torch.randn(4, 2)), "anchor and positive"),
    (lambda: losses.cpc(torch.randn(4), torch.randn(4)), "context_pred"),
    (lambda: losses.nce(torch.randn(4, 1), 0.01), "scores"),
    (lambda: losses.nce(torch.randn(4, 3), 2.0), "noise_prob"),
    (lambda: losses.jsd_mi(torch.tensor([float("nan")]), torch.randn(3)), "pos_scores"),
    (lambda: losses.triplet(torch.randn(4, 3), torch.randn(4, 3), torch.randn(5, 3)), "negative"),
    (lambda: losses.batch_hard_triplet(torch.randn(4, 3), torch.arange(5)), "labels"),
    (lambda: losses.semi_hard_triplet(torch.randn(4, 3), torch.arange(4), margin=-1), "margin"),
    (lambda: losses.prototypical(torch.randn(4, 3), torch.arange(4), torch.randn(2, 3), torch.tensor([0, 9])), "query_labels"),
    (lambda: losses.negative_cosine(torch.randn(4, 3, 2), torch.randn(4, 3, 2)), "p"),
    (lambda: losses.dino(torch.randn(3, 2, 5), torch.randn(2, 2, 4), torch.zeros(5)), "teacher_logits"),
    (lambda: losses.dino(torch.randn(3, 2, 5), torch.randn(2, 2, 5), torch.zeros(4)), "center"),
    (lambda: losses.dino(torch.randn(3, 2, 5), torch.randn(2, 2, 5), torch.zeros(5), teacher_temp=0), "teacher_temp"),
]


@pytest.mark.parametrize("case, name", ERROR_CASES)
def test_bad_input_raises_value_error_naming_the_argument(case, name):
    with pytest.raises(ValueError, match=name):
        case()
