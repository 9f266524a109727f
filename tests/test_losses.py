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


def test_nt_xent_matches_cross_entropy_at_scale_with_blocks(monkeypatch):
    # Small block budget forces many row blocks; compare with the plain full-matrix form.
    monkeypatch.setattr(losses, "_BLOCK_ELEMENTS", 300)
    z1 = _rand(70, 16, seed=3, dtype=torch.float32).requires_grad_()
    z2 = _rand(70, 16, seed=4, dtype=torch.float32).requires_grad_()
    got = losses.nt_xent(z1, z2, 0.2)
    got.backward()
    g1, g2 = z1.grad.clone(), z2.grad.clone()
    z1.grad = z2.grad = None
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T / 0.2).fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(70, 140), torch.arange(70)])
    ref = F.cross_entropy(logits, target)
    ref.backward()
    assert got.item() == pytest.approx(ref.item(), abs=1e-5)
    torch.testing.assert_close(g1, z1.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g2, z2.grad, atol=1e-5, rtol=1e-4)


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


# ----------------------------------------------------------------------------- stability and errors


def _large(n, d, seed):
    return 1e4 * F.normalize(_rand(n, d, seed=seed, dtype=torch.float32), dim=1)


STABILITY_CASES = {
    "nt_xent": lambda a, b: losses.nt_xent(a, b, 0.01),
    "nt_xent_decoupled": lambda a, b: losses.nt_xent(a, b, 0.01, decoupled=True),
    "info_nce": lambda a, b: losses.info_nce(a, b, None, 0.01),
    "info_nce_queue": lambda a, b: losses.info_nce(a, b, torch.cat([a, b]).detach(), 0.01),
}


@pytest.mark.parametrize("name", sorted(STABILITY_CASES))
def test_low_temperature_and_huge_norms_are_finite(name):
    a, b = _large(16, 8, 20).requires_grad_(), _large(16, 8, 21).requires_grad_()
    loss = STABILITY_CASES[name](a, b)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


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
]


@pytest.mark.parametrize("case, name", ERROR_CASES)
def test_bad_input_raises_value_error_naming_the_argument(case, name):
    with pytest.raises(ValueError, match=name):
        case()
