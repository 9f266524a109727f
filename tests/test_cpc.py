"""CPC: targets and negatives line up with the right time steps, and the future never reaches the context."""

import math

import pytest
import torch

from selfsup import losses
from selfsup.methods import Batch, CPCImage, CPCSequence, Progress
from selfsup.methods.cpc import RowContext, columns, patch_grid, step_pairs
from selfsup.nn import SignalEncoder, build_backbone


def test_step_pairs_line_up_by_hand():
    b, t, k, group = 4, 5, 2, 2
    context = torch.randn(b, t, 3)
    codes = torch.randn(b, t, 6)
    predictor = torch.nn.Linear(3, 6, bias=False)
    predictions, targets = step_pairs(predictor, context, codes, k, group)
    n = group * (t - k)
    assert predictions.shape == targets.shape == (b // group, n, 6)
    for seq in range(b):
        for time in range(t - k):
            g, row = seq // group, (seq % group) * (t - k) + time
            assert torch.allclose(predictions[g, row], predictor(context[seq, time]), atol=1e-6)
            assert torch.equal(targets[g, row], codes[seq, time + k])      # the positive: z_{t+k} of that sequence
    # Every prediction has 1 positive and group·(T-k) - 1 negatives; B·(T-k) predictions in all.
    assert predictions.shape[0] * predictions.shape[1] == b * (t - k) and targets.shape[1] - 1 == 5


def test_cpc_loss_is_infonce_by_hand():
    torch.manual_seed(0)
    method = CPCSequence(SignalEncoder(width=4), hidden=3, prediction_steps=(1, 3), group=None)
    context, codes = torch.randn(2, 4, 3), torch.randn(2, 4, 4)
    out = method.cpc_loss(context, codes)
    total = 0.0
    for k, predictor in zip((1, 3), method.predictors):
        terms = []
        pairs = [(s, u) for s in range(2) for u in range(4 - k)]
        for s, u in pairs:
            p = predictor(context[s, u]).detach()
            scores = [float(p @ codes[s2, u2 + k]) for s2, u2 in pairs]   # every code of step k in the batch
            own = pairs.index((s, u))
            terms.append(-(scores[own] - math.log(sum(math.exp(x) for x in scores))))
        total += sum(terms) / len(terms)
    assert out["loss"].item() == pytest.approx(total / 2, rel=1e-5)


def test_sequence_context_does_not_see_the_future():
    torch.manual_seed(0)
    method = CPCSequence(SignalEncoder(width=8), hidden=6, prediction_steps=(1,)).eval()
    encoder = method.backbone
    signal = torch.randn(2, 1, 160 * 20 + 465)
    t = 7
    changed = signal.clone()
    changed[..., 160 * t + encoder.receptive_field:] = torch.randn_like(changed[..., 160 * t + encoder.receptive_field:])
    with torch.no_grad():
        before, after = method.gru(encoder(signal))[0], method.gru(encoder(changed))[0]
    assert torch.equal(before[:, :t + 1], after[:, :t + 1])        # c_0..c_t unchanged
    assert not torch.allclose(before[:, t + 1:], after[:, t + 1:])  # the later ones do move
    assert encoder(signal).shape[1] == (signal.shape[-1] - 465) // 160 + 1


def test_image_context_does_not_see_rows_below():
    torch.manual_seed(0)
    context = RowContext(5, 4)
    codes = torch.randn(2, 5, 3, 5)
    changed = codes.clone()
    changed[:, 3:] = torch.randn_like(changed[:, 3:])
    before, after = context(codes), context(changed)            # (B·C', R, hidden)
    assert torch.equal(before[:, :3], after[:, :3]) and not torch.allclose(before[:, 3:], after[:, 3:])
    # Sequences are the columns, in the order of columns(): sequence b·C' + x is column x of image b.
    assert torch.equal(columns(codes)[1 * 3 + 2], codes[1, :, 2])


def test_image_path_end_to_end_no_leak_from_pixels_below():
    torch.manual_seed(0)
    backbone = build_backbone("convnet", in_channels=1, image_size=16, width=4)
    method = CPCImage(backbone, patch=8, stride=4, hidden=6, prediction_steps=(1, 2), group=2).eval()
    images = torch.rand(2, 1, 20, 20)
    tiles = patch_grid(images, 8, 4)
    assert tiles.shape == (2, 4, 4, 1, 8, 8) and torch.equal(tiles[1, 2, 3], images[1, :, 8:16, 12:20])
    changed = images.clone()
    changed[:, :, 12:] = torch.rand_like(changed[:, :, 12:])     # pixel rows 12+: patch rows 2.. (row 1 spans 4-11)
    with torch.no_grad():
        before = method.context(method.grid.codes(images))
        after = method.context(method.grid.codes(changed))
    assert torch.equal(before[:, :2], after[:, :2]) and not torch.allclose(before[:, 2:], after[:, 2:])
    method.train()
    out = method.training_step(Batch([images], torch.arange(2)), Progress(0, 1, 1))
    out["loss"].backward()
    assert 0 <= out["accuracy"].item() <= 1 and backbone.net[0].weight.grad is not None
    assert method.eval_encoder()(images).shape == (2, 32)


def test_bad_steps_and_short_inputs_are_named():
    backbone = build_backbone("convnet", in_channels=1, image_size=16, width=4)
    with pytest.raises(ValueError, match="prediction_steps"):
        CPCImage(backbone, prediction_steps=[0, 1])
    method = CPCImage(backbone, patch=8, stride=4, prediction_steps=(4,))
    with pytest.raises(ValueError, match="4 rows"):
        method.training_step(Batch([torch.rand(2, 1, 20, 20)], torch.arange(2)), Progress(0, 1, 1))
    with pytest.raises(ValueError, match="shorter than one code"):
        SignalEncoder(width=4)(torch.randn(1, 1, 400))
    with pytest.raises(ValueError, match="cpc_audio"):
        CPCSequence(backbone)
    assert losses.cpc(torch.zeros(3, 4), torch.zeros(3, 4)).item() == pytest.approx(math.log(3))


def test_signal_encoder_norms_batch_channel_or_none():
    from selfsup.nn.backbones import ChannelNorm

    torch.manual_seed(0)
    x = torch.randn(3, 1, 1000)
    kinds = {norm: [type(m) for m in SignalEncoder(width=4, norm=norm).net] for norm in ("batch", "channel", "none")}
    assert kinds["batch"][:3] == [torch.nn.Conv1d, torch.nn.BatchNorm1d, torch.nn.ReLU]
    assert kinds["channel"][:3] == [torch.nn.Conv1d, ChannelNorm, torch.nn.ReLU]
    assert kinds["none"][:2] == [torch.nn.Conv1d, torch.nn.ReLU] and len(kinds["none"]) == 10
    # CPC_audio's ChannelNorm: each sample and time step over its channels (unbiased variance), by hand.
    norm = ChannelNorm(4)
    h = torch.randn(2, 4, 5)
    mean, var = h.mean(1, keepdim=True), h.var(1, keepdim=True, unbiased=True)
    assert torch.allclose(norm(h), (h - mean) / torch.sqrt(var + 1e-5), atol=1e-6)
    # In training, a sample's codes depend on the others under BatchNorm, never under the per-sample norms.
    for name, mixes in (("batch", True), ("channel", False), ("none", False)):
        encoder = SignalEncoder(width=4, norm=name).train()
        other = x.clone()
        other[1:] += 1.0
        assert torch.allclose(encoder(x)[0], encoder(other)[0], atol=1e-5) != mixes, name
    with pytest.raises(ValueError, match="norm must be one of"):
        SignalEncoder(width=4, norm="layer")
    with pytest.raises(ValueError, match="backbone.norm"):
        build_backbone("convnet", in_channels=1, image_size=28, norm="channel")


def test_accuracy_counts_the_predictions_whose_own_code_scores_highest():
    backbone = SignalEncoder(16)                      # codes of 16 values
    method = CPCSequence(backbone, hidden=16, prediction_steps=(1,))
    with torch.no_grad():
        method.predictors[0].weight.copy_(torch.eye(16))  # W_1 c_t = c_t
    codes = torch.eye(16)[:10].reshape(2, 5, 16)       # ten distinct one-hot codes, 2 sequences x 5 times
    context = torch.zeros(2, 5, 16)
    context[:, :4] = codes[:, 1:]                       # c_t = z_{t+1}: every prediction names its own code
    assert method.cpc_loss(context, codes)["accuracy"].item() == 1.0
    context[0, 0] = codes[1, 3]                         # one of the 8 predictions names another code
    context[1, 2] = 0.5 * codes[1, 3] + 0.4 * codes[0, 2]  # one leans towards its own (z_{1,3}): still a hit
    assert method.cpc_loss(context, codes)["accuracy"].item() == pytest.approx(7 / 8)


def test_image_groups_are_whole_images_and_the_loss_is_infonce_over_their_patches_by_hand(monkeypatch):
    # 4 images of a 6x6 grid (28 pixels, patches of 8 every 4), k = 2: each image gives (6 - 2) · 6 = 24
    # predictions. group=4 images is one group of 96 codes, 95 negatives per prediction (counting columns
    # as the group, it was 4 columns: 16 codes, 15 negatives); group=2 is two groups of 48.
    torch.manual_seed(0)
    backbone = build_backbone("convnet", in_channels=1, image_size=16, width=4)
    images = torch.rand(4, 1, 28, 28)
    shapes, original = [], losses.cpc
    monkeypatch.setattr(losses, "cpc", lambda p, z: shapes.append(tuple(p.shape)) or original(p, z))
    for group, count in ((4, 1), (2, 2)):
        method = CPCImage(backbone, patch=8, stride=4, hidden=5, prediction_steps=(2,), group=group)
        shapes.clear()
        loss = method.training_step(Batch([images], torch.arange(4)), Progress(0, 1, 1))["loss"]
        assert shapes == [(count, 96 // count, 32)]
        with torch.no_grad():
            codes = method.grid.codes(images)                             # (B, R, C', D)
            context = method.context(codes)                               # (B · C', R, H): image b, column x at b·6 + x
            terms = []
            for b in range(4):
                candidates = [codes[b2, r + 2, x] for b2 in range(4) if b2 // group == b // group
                              for r in range(4) for x in range(6)]
                assert len(candidates) - 1 == 4 * 24 // count - 1
                for r in range(4):
                    for x in range(6):
                        prediction = method.predictors[0](context[b * 6 + x, r])
                        scores = torch.stack([prediction @ z for z in candidates]).double()
                        terms.append(float(torch.logsumexp(scores, 0) - prediction @ codes[b, r + 2, x]))
        assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    with pytest.raises(ValueError, match="batch of 4 images does not split into groups of method_args.group=3"):
        CPCImage(backbone, patch=8, stride=4, hidden=5, prediction_steps=(2,), group=3).training_step(
            Batch([images], torch.arange(4)), Progress(0, 1, 1))
