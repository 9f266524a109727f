"""Losses called inside bf16 autocast (as the engine does) compute in float32, forward and backward."""

import pytest
import torch

from selfsup import losses


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # bf16-representable values, so the float32 reference sees exactly the same numbers
    return [torch.randn(48, 16, generator=g).bfloat16().float().requires_grad_() for _ in range(2)]


CASES = {
    "nt_xent": lambda a, b: losses.nt_xent(a, b, 0.5),
    "nt_xent_decoupled": lambda a, b: losses.nt_xent(a, b, 0.2, decoupled=True),
    "info_nce": lambda a, b: losses.info_nce(a, b, temperature=0.07),
    "info_nce_queue": lambda a, b: losses.info_nce(a, b, negatives=torch.cat([a, b]).detach().flip(0), temperature=0.2),
    "clip": lambda a, b: losses.clip(a, b, torch.tensor(10.0)),
    "supcon": lambda a, b: losses.supcon(torch.cat([a, b]), torch.arange(96) % 7, 0.1),
    "n_pair": lambda a, b: losses.n_pair(a, b),
    "cpc": lambda a, b: losses.cpc(a, b),
    "negative_cosine": lambda a, b: losses.negative_cosine(a, b),
    "triplet": lambda a, b: losses.triplet(a, b, b.flip(0)),
    "batch_hard_triplet": lambda a, b: losses.batch_hard_triplet(torch.cat([a, b]), torch.arange(96) % 5),
    "prototypical": lambda a, b: losses.prototypical(a, torch.arange(48) % 4, b, torch.arange(48) % 4),
    "local_global_info_nce": lambda a, b: losses.local_global_info_nce(a.view(12, 4, 16), b[:12]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_loss_under_bf16_autocast_matches_float32(name):
    fn = CASES[name]
    a, b = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fn(a, b)
    assert loss.dtype == torch.float32
    loss.backward()
    a2, b2 = [t.detach().clone().requires_grad_() for t in (a, b)]
    reference = fn(a2, b2)
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), abs=1e-5)
    for got, expected in ((a.grad, a2.grad), (b.grad, b2.grad)):  # None where the loss stops gradients
        assert (got is None) == (expected is None)
        assert got is None or torch.allclose(got, expected, atol=1e-5)
