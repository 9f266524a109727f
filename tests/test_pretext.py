"""Pretext tasks: the labels are checked by undoing the task (rotate back, reassemble the tiles, find
the patch in the image), the permutation set against a brute-force search, and the methods' losses
against cross-entropy by hand."""

import itertools

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from selfsup import augment
from selfsup.augment import pretext
from selfsup.methods import METHODS, Batch, Jigsaw, Method, Progress, RelativeLocation, Rotation
from selfsup.nn import Backbone, build_backbone


def images(n: int = 3, side: int = 12, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, side, side), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def test_rotating_back_gives_the_image():
    x = images(4, 8)
    rotated, labels = pretext.rotations(x)
    assert rotated.shape == (16, 3, 8, 8) and sorted(labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    for image, k, original in zip(rotated, labels.tolist(), x.repeat(4, 1, 1, 1)):
        assert torch.equal(torch.rot90(image, -k, dims=(-2, -1)), original)
    # label 1 is 90 degrees counter-clockwise: the top row becomes the left column, read upwards
    assert torch.equal(rotated[4][:, :, 0], x[0][:, 0, :].flip(-1))
    with pytest.raises(ValueError, match="square"):
        pretext.rotations(torch.rand(1, 1, 4, 6))


def test_patches_sit_inside_their_cells_with_the_gap():
    x = torch.arange(2 * 1 * 15 * 15, dtype=torch.float32).view(2, 1, 15, 15)  # every pixel unique
    cells = torch.tensor([list(range(9)), list(range(8, -1, -1))])
    patches = pretext.grid_patches(x, cells, patch=3, gap=1, generator=torch.Generator().manual_seed(1))
    assert patches.shape == (2, 9, 1, 3, 3)
    for b in range(2):
        corners = {}
        for k in range(9):
            top, left = divmod(int((patches[b, k, 0, 0, 0] - b * 225).item()), 15)  # unique values locate it
            assert torch.equal(patches[b, k, 0], x[b, 0, top:top + 3, left:left + 3])
            cell = int(cells[b, k])
            row, col = divmod(cell, 3)
            assert row * 5 <= top and top + 3 <= row * 5 + 5 and col * 5 <= left and left + 3 <= col * 5 + 5
            corners[cell] = (top, left)
        for cell, (top, left) in corners.items():  # >= 1 pixel between horizontal and vertical neighbours
            if cell % 3 < 2:
                assert corners[cell + 1][1] - (left + 3) >= 1
            if cell < 6:
                assert corners[cell + 3][0] - (top + 3) >= 1
    with pytest.raises(ValueError, match="do not fit"):
        pretext.grid_patches(x, cells, patch=4, gap=2)


def test_patch_offsets_in_their_cells_are_uniform_over_the_jitter_range():
    # grid_geometry's range: offsets in [gap // 2, gap // 2 + jitter], jitter = cell - patch - gap. A 21x24
    # image in a 3x3 grid: cells 7 high and 8 wide; patch 2, gap 2: rows 1..4, columns 1..5 of each cell.
    n, height, width = 300, 21, 24
    x = torch.arange(height * width, dtype=torch.float32).view(1, 1, height, width).expand(n, 1, height, width)
    cells = torch.arange(9).repeat(n, 1)
    patches = pretext.grid_patches(x, cells, patch=2, gap=2, generator=torch.Generator().manual_seed(0))
    corner = patches[:, :, 0, 0, 0].long()  # each pixel's value is its index, row * width + column
    top, left = corner // width, corner % width
    row_offset = top - (cells // 3) * 7
    col_offset = left - (cells % 3) * 8
    for offsets, low, high in ((row_offset, 1, 4), (col_offset, 1, 5)):
        for cell in range(9):  # every cell reaches every offset of the range, and no other
            assert sorted(set(offsets[:, cell].tolist())) == list(range(low, high + 1))
        counts = torch.bincount(offsets.flatten() - low, minlength=high - low + 1)
        assert scipy.stats.chisquare(counts.numpy()).pvalue > 1e-3  # 2700 draws, uniform


def test_reassembling_the_tiles_by_the_permutation_gives_the_image_back():
    x = images(5, 12)
    perms = pretext.hamming_permutations(10)
    tiles, labels = pretext.jigsaw(x, perms, patch=4, gap=0, generator=torch.Generator().manual_seed(2))
    assert tiles.shape == (5, 9, 3, 4, 4) and labels.shape == (5,)
    for b in range(5):
        in_place = torch.empty_like(tiles[b])
        in_place[perms[labels[b]]] = tiles[b]  # position j shows tile perm[j]
        rows = [torch.cat(list(in_place[r * 3:(r + 1) * 3]), dim=-1) for r in range(3)]
        assert torch.equal(torch.cat(rows, dim=-2), x[b])


def test_resize_patches_shrinks_with_antialiased_bilinear_per_patch():
    # Shrinking 12 -> 5 px is torch's antialiased bilinear (align_corners=False), which is PIL's
    # BILINEAR reduction; plain bilinear would skip pixels (aliasing). Leading dims are kept, output float.
    from PIL import Image

    tiles = images(2 * 9, 12).view(2, 9, 3, 12, 12)
    got = pretext.resize_patches(tiles, 5)
    assert got.dtype == torch.float32 and got.shape == (2, 9, 3, 5, 5)
    flat = tiles.flatten(0, 1).float()
    reference = F.interpolate(flat, size=(5, 5), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(got.flatten(0, 1), reference)
    pil = np.asarray(Image.fromarray(flat[4, 1].numpy()).resize((5, 5), Image.BILINEAR))
    np.testing.assert_allclose(got[0, 4, 1].numpy(), pil, atol=1e-3)
    aliased = F.interpolate(flat, size=(5, 5), mode="bilinear", antialias=False, align_corners=False)
    assert (reference - aliased).abs().max() > 10  # the two filters differ here by far more than the tolerance


def test_relative_patch_labels_name_the_neighbours_cell():
    x = images(16, 9)
    centre, neighbour, labels = pretext.relative_patches(x, patch=3, gap=0, generator=torch.Generator().manual_seed(3))
    assert set(labels.tolist()) <= set(range(8)) and len(set(labels.tolist())) > 3
    for b in range(16):
        assert torch.equal(centre[b], x[b, :, 3:6, 3:6])
        row, col = divmod(pretext.NEIGHBOURS[labels[b]], 3)
        assert torch.equal(neighbour[b], x[b, :, row * 3:row * 3 + 3, col * 3:col * 3 + 3])


def _best_min_distance(n: int, count: int) -> int:
    """Brute force: the largest smallest pairwise Hamming distance over all sets of ``count``
    permutations of ``n`` (sets containing the identity suffice: relabelling preserves distances)."""
    perms = np.array(list(itertools.permutations(range(n))))
    distance = (perms[:, None] != perms[None]).sum(-1)
    best = 0
    for rest in itertools.combinations(range(1, len(perms)), count - 1):
        members = (0, *rest)
        best = max(best, min(distance[a, b] for a, b in itertools.combinations(members, 2)))
    return best


@pytest.mark.parametrize("n,count", [(3, 2), (3, 3), (3, 4), (3, 6), (4, 2), (4, 4), (4, 5), (4, 7)])
def test_permutation_set_reaches_the_brute_force_minimum_distance(n, count):
    perms = pretext.hamming_permutations(count, n)
    assert perms.shape == (count, n) and torch.equal(perms[0], torch.arange(n))
    assert all(sorted(p.tolist()) == list(range(n)) for p in perms) and perms.unique(dim=0).shape[0] == count
    distance = (perms[:, None] != perms[None]).sum(-1).fill_diagonal_(n + 1)
    assert int(distance.min()) == _best_min_distance(n, count)


def test_the_default_permutation_set_is_deterministic_and_far_apart():
    perms = pretext.hamming_permutations(100)
    assert torch.equal(perms, pretext.hamming_permutations(100))
    distance = (perms[:, None] != perms[None]).sum(-1).fill_diagonal_(10)
    g = torch.Generator().manual_seed(0)
    drawn = torch.stack([torch.randperm(9, generator=g) for _ in range(100)])
    drawn_distance = (drawn[:, None] != drawn[None]).sum(-1).fill_diagonal_(10)
    assert int(distance.min()) >= 6 > int(drawn_distance.min())  # far above 100 permutations drawn at random
    with pytest.raises(ValueError, match=r"count must be between 1 and 4! = 24"):
        pretext.hamming_permutations(25, 4)


def linear_backbone(side: int, out_dim: int = 5) -> Backbone:
    torch.manual_seed(0)
    return Backbone(nn.Sequential(nn.Flatten(), nn.Linear(3 * side * side, out_dim)), out_dim, 3, [0.5] * 3, [0.5] * 3)


@pytest.mark.parametrize("name,cls", [("rotation", Rotation), ("relative_location", RelativeLocation),
                                      ("jigsaw", Jigsaw)])
def test_pretext_methods_are_registered_with_one_view(name, cls):
    assert METHODS[name] is cls and cls.views_needed == (1, 1) and "task_accuracy" in cls.curves
    method = cls(linear_backbone(4 if name != "rotation" else 12))
    assert isinstance(method, Method) and len(method.augmentation(12).output_views) == 1


def test_rotation_loss_is_cross_entropy_over_all_four_rotations():
    method = Rotation(linear_backbone(8)).train()
    x = augment.to_float(images(3, 8))
    out = method.training_step(Batch([x], torch.arange(3)), Progress(0, 10, 5))
    with torch.no_grad():
        logits = [method.classifier(method.backbone(torch.rot90(x, k, dims=(-2, -1)))).double() for k in range(4)]
    expected = -np.mean([F.log_softmax(logits[k], dim=1)[:, k].numpy() for k in range(4)])
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    right = np.mean([(logits[k].argmax(1) == k).float().numpy() for k in range(4)])
    assert out["task_accuracy"].item() == pytest.approx(right)


def _cell(x: torch.Tensor, cell: int, side: int) -> torch.Tensor:
    """Grid cell ``cell`` (row-major) of images ``x``, ``side`` pixels a cell."""
    row, col = divmod(cell, 3)
    return x[:, :, row * side:(row + 1) * side, col * side:(col + 1) * side]


def _deepcontext(patch: torch.Tensor) -> torch.Tensor:
    """What the reference's ``prep_image`` (cdoersch/deepcontext train.py) feeds its network, for patches
    ``(N, C, h, w)`` without its colour dropping: each channel's mean removed, the patch divided by
    ``sqrt(mean(im ** 2))`` over all its values (and scaled by 50, which only the AlexNet inputs need)."""
    centred = patch - patch.mean(dim=(2, 3), keepdim=True)
    return centred / centred.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    logits = logits.double()
    return sum(float(torch.logsumexp(row, 0) - row[k]) for row, k in zip(logits, labels.tolist())) / len(labels)


@pytest.mark.parametrize("head", ["paper", "small"])
def test_relative_location_loss_by_hand(head):
    # Patches as large as their cells and no gap: no jitter, so each patch is its cell exactly.
    method = RelativeLocation(linear_backbone(4), patch=4, gap=0, hidden_dim=6, head=head).train()
    linears = [m for m in (*method.fc6.modules(), *method.head.modules()) if isinstance(m, torch.nn.Linear)]
    out_dim = method.backbone.out_dim
    # The paper's Figure 3: fc6 per patch, then fc7, fc8 on the pair and fc9 to the 8 positions.
    assert [tuple(m.weight.shape) for m in linears] == (
        [(6, out_dim), (6, 12), (6, 6), (8, 6)] if head == "paper" else [(6, 2 * out_dim), (8, 6)])
    x = augment.to_float(images(5, 12))
    torch.manual_seed(3)
    out = method.training_step(Batch([x], torch.arange(5)), Progress(0, 10, 5))
    torch.manual_seed(3)
    labels = torch.randint(8, (5,))  # the neighbour drawn for each image: the first draw of the step
    with torch.no_grad():
        logits = []
        for i, label in enumerate(labels.tolist()):
            centre = _deepcontext(_cell(x[i:i + 1], 4, 4))  # each patch normalised as the reference does
            neighbour = _deepcontext(_cell(x[i:i + 1], pretext.NEIGHBOURS[label], 4))
            pair = torch.cat([method.fc6(method.backbone.net(centre)), method.fc6(method.backbone.net(neighbour))],
                             dim=1)
            logits.append(method.head(pair)[0])
    logits = torch.stack(logits)
    assert out["loss"].item() == pytest.approx(_cross_entropy(logits, labels), rel=1e-5)
    assert out["task_accuracy"].item() == pytest.approx((logits.argmax(1) == labels).float().mean().item())


@pytest.mark.parametrize("head,patch_norm", [("paper", True), ("small", True), ("small", False)])
def test_relative_location_with_all_neighbours_is_the_mean_over_the_eight_pairs_of_each_image(head, patch_norm):
    method = RelativeLocation(linear_backbone(4), patch=4, gap=0, hidden_dim=6, head=head, all_neighbours=True,
                              patch_norm=patch_norm).train()
    x = augment.to_float(images(3, 12))
    out = method.training_step(Batch([x], torch.arange(3)), Progress(0, 10, 5))

    def encode(patch):  # the reference's normalised patch straight into the network, or the backbone's own
        return method.fc6(method.backbone.net(_deepcontext(patch)) if patch_norm else method.backbone(patch))

    with torch.no_grad():
        logits, labels = [], []
        for i in range(3):
            centre = encode(_cell(x[i:i + 1], 4, 4))
            for label, cell in enumerate(pretext.NEIGHBOURS):
                neighbour = encode(_cell(x[i:i + 1], cell, 4))
                logits.append(method.head(torch.cat([centre, neighbour], dim=1))[0])
                labels.append(label)
    logits, labels = torch.stack(logits), torch.tensor(labels)
    assert out["loss"].item() == pytest.approx(_cross_entropy(logits, labels), rel=1e-5)
    assert out["task_accuracy"].item() == pytest.approx((logits.argmax(1) == labels).float().mean().item())


def test_relative_location_patches_lose_brightness_and_contrast_and_its_images_are_not_flipped():
    # The reference (deepcontext prep_image): a patch's brightness and contrast are no cue.
    patches = torch.rand(6, 3, 5, 5)
    changed = patches * torch.rand(6, 1, 1, 1).add(0.5) + torch.rand(6, 3, 1, 1) * 0.2
    torch.testing.assert_close(pretext.standardise_patches(changed), pretext.standardise_patches(patches))
    torch.testing.assert_close(pretext.standardise_patches(patches), _deepcontext(patches))
    flat = torch.full((1, 3, 2, 2), 0.3)
    assert torch.equal(pretext.standardise_patches(flat), torch.zeros_like(flat))  # rms 0 counts as 1
    # Neither reference loader flips (deepcontext samples grids of unflipped images, JigsawImageLoader
    # centre-crops): the two methods' views are the images as they are.
    x = images(8, 12)
    for cls in (RelativeLocation, Jigsaw):
        (view,) = cls(linear_backbone(4)).augmentation(12)(x, generator=torch.Generator().manual_seed(0))
        assert torch.equal(view, augment.to_float(x)), cls.__name__


def test_pretext_heads_put_dropout_where_the_reference_networks_do():
    # JigsawPuzzlePytorch's Network: fc6 = Linear, ReLU, Dropout(0.5); fc7 = Linear, ReLU, Dropout(0.5); fc8.
    jigsaw = Jigsaw(linear_backbone(4), num_permutations=12, hidden_dim=5, dropout=0.5)
    kinds = [type(m).__name__ for m in (*jigsaw.fc6, *jigsaw.head)]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert all(m.p == 0.5 for m in jigsaw.modules() if isinstance(m, nn.Dropout))
    pair = RelativeLocation(linear_backbone(4), hidden_dim=6, head="small", dropout=0.3)
    assert [type(m).__name__ for m in pair.head] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert not any(isinstance(m, nn.Dropout) for m in Jigsaw(linear_backbone(4), num_permutations=12).modules())
    for cls in (Jigsaw, RelativeLocation):
        with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1"):
            cls(linear_backbone(4), dropout=1)


@pytest.mark.parametrize("head", ["paper", "small"])
def test_jigsaw_loss_by_hand_with_standardised_tiles(head):
    method = Jigsaw(linear_backbone(4), num_permutations=12, patch=4, gap=0, input_size=4, hidden_dim=5,
                    head=head).train()
    linears = [m for m in (*method.fc6.modules(), *method.head.modules()) if isinstance(m, torch.nn.Linear)]
    out_dim = method.backbone.out_dim
    # The reference network (JigsawPuzzlePytorch): fc6 per tile, fc7 4x as wide on the 9, the classifier.
    assert [tuple(m.weight.shape) for m in linears] == (
        [(5, out_dim), (20, 45), (12, 20)] if head == "paper" else [(5, 9 * out_dim), (12, 5)])
    x = augment.to_float(images(5, 12))
    torch.manual_seed(4)
    out = method.training_step(Batch([x], torch.arange(5)), Progress(0, 10, 5))
    torch.manual_seed(4)
    labels = torch.randint(12, (5,))  # the permutation drawn for each image
    with torch.no_grad():
        logits = []
        for i, label in enumerate(labels.tolist()):
            features = []
            for tile in method.permutations[label].tolist():  # position j shows tile permutations[label][j]
                cell = _cell(x[i:i + 1], tile, 4)
                mean = cell.mean(dim=(2, 3), keepdim=True)
                std = cell.std(dim=(2, 3), keepdim=True)  # the reference loader: tile.view(3, -1).std(dim=1)
                features.append(method.fc6(method.backbone.net((cell - mean) / std)))  # what the network reads
            logits.append(method.head(torch.cat(features, dim=1))[0])
    logits = torch.stack(logits)
    assert out["loss"].item() == pytest.approx(_cross_entropy(logits, labels), rel=1e-5)


def test_jigsaw_image_layout_loss_by_hand():
    # JiGen (fmcarlucci/JigenDG JigsawLoader.py): the 3x3 cells shuffled and put back together into one
    # image (make_grid, no padding), class 0 the unshuffled image, one linear layer on its features.
    method = Jigsaw(linear_backbone(12), num_permutations=12, layout="image", tile_norm=False).train()
    assert tuple(method.head.weight.shape) == (13, method.backbone.out_dim)  # P + 1 classes
    assert torch.equal(method.permutations, pretext.hamming_permutations(13))  # row 0 the identity
    x = augment.to_float(images(5, 13))  # 13 px: cells of 4, the last row and column left out
    torch.manual_seed(4)
    out = method.training_step(Batch([x], torch.arange(5)), Progress(0, 10, 5))
    torch.manual_seed(4)
    labels = torch.randint(13, (5,))
    canvas = torch.zeros(5, 3, 12, 12)
    for i, label in enumerate(labels.tolist()):
        for j, tile in enumerate(method.permutations[label].tolist()):  # position j shows cell permutations[label][j]
            row, col = divmod(j, 3)
            canvas[i, :, 4 * row:4 * row + 4, 4 * col:4 * col + 4] = _cell(x[i:i + 1], tile, 4)[0]
    with torch.no_grad():
        logits = method.head(method.backbone(canvas))
    assert out["loss"].item() == pytest.approx(_cross_entropy(logits, labels), rel=1e-5)
    # whole_image=1 (JiGen's bias_whole_image): every image shown as it is, class 0.
    seen = []
    whole = Jigsaw(linear_backbone(12), num_permutations=12, layout="image", tile_norm=False, whole_image=1.0)
    whole.backbone.net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    whole.training_step(Batch([x], torch.arange(5)), Progress(0, 10, 5))
    assert torch.allclose(seen[0], (x[:, :, :12, :12] - 0.5) / 0.5)
    # Tiles smaller than their cells sit in the middle of them with black around: 2 px tiles, gap 2, cells of 4.
    seen.clear()
    gapped = Jigsaw(linear_backbone(12), num_permutations=12, layout="image", tile_norm=False, whole_image=1.0,
                    patch=2, gap=2)
    gapped.backbone.net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    gapped.training_step(Batch([x], torch.arange(5)), Progress(0, 10, 5))
    raw = seen[0] * 0.5 + 0.5
    inside = torch.zeros(12, 12, dtype=torch.bool)
    for row in range(3):
        for col in range(3):
            inside[4 * row + 1:4 * row + 3, 4 * col + 1:4 * col + 3] = True
    assert torch.allclose(raw[..., inside], x[:, :, :12, :12][..., inside], atol=1e-6)  # gap 2: no jitter
    assert torch.allclose(raw[..., ~inside], torch.zeros(()), atol=1e-6)
    with pytest.raises(ValueError, match="whole_image is a probability for layout 'image'"):
        Jigsaw(linear_backbone(4), whole_image=0.5)
    with pytest.raises(ValueError, match="layout must be"):
        Jigsaw(linear_backbone(4), layout="grid")


def test_jigsaw_keeps_its_permutation_set_and_resolves_the_tile_geometry():
    method = Jigsaw(linear_backbone(4), num_permutations=12, patch=3, gap=1, input_size=4)
    assert torch.equal(method.permutations, pretext.hamming_permutations(12))
    assert "permutations" in method.state_dict()
    with pytest.raises(ValueError, match="do not fit"):
        Jigsaw(linear_backbone(4), patch=5, gap=1).training_step(Batch([images(2, 15)], torch.arange(2)),
                                                                 Progress(0, 10, 5))
    with pytest.raises(ValueError, match="num_permutations"):
        Jigsaw(linear_backbone(4), num_permutations=1)


def test_jigsaw_feeds_the_network_tiles_normalised_by_their_own_statistics():
    # The reference loader (JigsawImageLoader.py): Normalize(mean=tile's per-channel mean, std=its std).
    torch.manual_seed(0)
    method = Jigsaw(linear_backbone(4), num_permutations=12, patch=3, gap=1, input_size=4)
    seen = []
    method.backbone.net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    x = augment.to_float(images(4, 15))
    method.training_step(Batch([x], torch.arange(4)), Progress(0, 10, 5))
    tiles = seen[0].flatten(-2)  # (36, 3, 16): what the network read, after the backbone's own normalisation
    assert torch.allclose(tiles.mean(-1), torch.zeros(36, 3), atol=1e-5)
    assert torch.allclose(tiles.std(-1), torch.ones(36, 3), atol=1e-4)
    # So a tile's brightness and contrast tell nothing: the same puzzle with every tile's contrast and
    # brightness changed gives the same features (the shortcut the reference closes).
    tiles = torch.rand(2, 9, 3, 4, 4)
    changed = tiles * torch.rand(2, 9, 1, 1, 1).add(0.5) + torch.rand(2, 9, 3, 1, 1) * 0.1
    assert torch.allclose(pretext.standardise_tiles(changed), pretext.standardise_tiles(tiles), atol=1e-5)
    flat = torch.full((1, 1, 3, 3), 0.5)
    assert torch.equal(pretext.standardise_tiles(flat), torch.zeros_like(flat))  # std 0 counts as 1
    plain = Jigsaw(linear_backbone(4), num_permutations=12, patch=3, gap=1, input_size=4, tile_norm=False)
    seen.clear()
    plain.backbone.net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    plain.training_step(Batch([x], torch.arange(4)), Progress(0, 10, 5))
    assert not torch.allclose(seen[0].flatten(-2).std(-1), torch.ones(36, 3), atol=1e-2)


def test_jigsaw_plus_plus_replaces_up_to_k_tiles_by_tiles_of_another_image():
    # Jigsaw++ (Noroozi et al. 2018, section 4): 0 to 2 tiles of a puzzle, at random positions, come from
    # another image. Each tile here carries its image and its tile index as its two pixel values.
    batch = 600
    tiles = torch.stack([torch.arange(batch).view(-1, 1).expand(batch, 9).float(),
                         torch.arange(9).view(1, -1).expand(batch, 9).float()], dim=-1).view(batch, 9, 1, 1, 2)
    out, mask = pretext.replace_with_foreign_tiles(tiles, 2, generator=torch.Generator().manual_seed(0))
    image, tile = out[..., 0, 0, 0], out[..., 0, 0, 1]
    own = image == torch.arange(batch).view(-1, 1).float()
    assert torch.equal(~own, mask)                                   # replaced exactly where the mask says
    assert torch.equal(out[~mask], tiles[~mask])                     # the rest untouched
    counts = torch.bincount(mask.sum(1), minlength=3)
    assert counts.sum() == batch and len(counts) == 3                # never more than 2
    assert (counts - batch / 3).abs().max() < 4 * (batch * (1 / 3) * (2 / 3)) ** 0.5  # 0, 1, 2 equally often
    per_position = mask.sum(0).float()                               # every position as likely: 600 / 9 each
    assert (per_position - per_position.mean()).abs().max() < 4 * per_position.mean().sqrt()
    foreign = image[mask].long()
    assert len(foreign.sub(torch.nonzero(mask)[:, 0]).remainder(batch).unique()) == 1  # one other image per call
    assert torch.equal(tile[mask], tiles[..., 0, 0, 1][mask])        # at the same position of that image's puzzle
    unchanged, none = pretext.replace_with_foreign_tiles(tiles, 0)
    assert unchanged is tiles and not none.any()
    with pytest.raises(ValueError, match="most"):
        pretext.replace_with_foreign_tiles(tiles, 10)
    # The method: the option reaches the puzzles, labels stay the permutations, and 0 is the 2016 puzzle.
    torch.manual_seed(0)
    method = Jigsaw(linear_backbone(4), num_permutations=12, patch=3, gap=1, input_size=4, foreign_tiles=2,
                    tile_norm=False)
    seen = []
    method.backbone.net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    x = torch.linspace(0, 1, 64).view(64, 1, 1, 1).expand(64, 3, 15, 15)  # image i: one grey level
    out = method.training_step(Batch([x], torch.arange(64)), Progress(0, 10, 5))
    assert torch.isfinite(out["loss"])
    level = seen[0].reshape(64, 9, -1)[..., 0]                         # the level each tile reached the network with
    strangers = (level - level.median(dim=1, keepdim=True).values).abs().gt(1e-4).sum(1)
    assert strangers.max() == 2 and strangers.min() == 0
    with pytest.raises(ValueError, match="foreign_tiles"):
        Jigsaw(linear_backbone(4), foreign_tiles=9)


def test_tile_colour_jitter_shifts_each_channel_of_each_tile_by_at_most_two_levels():
    tiles = torch.full((500, 3, 4, 4), 0.5)
    shifted = pretext.jitter_tile_colours(tiles, generator=torch.Generator().manual_seed(0))
    levels = torch.round((shifted - 0.5) * 255)
    assert torch.equal(levels, levels[..., :1, :1].expand_as(levels))  # one shift per tile and channel
    assert set(levels[..., 0, 0].unique().tolist()) == {-2.0, -1.0, 0.0, 1.0}  # randint(-2, 2): {-2, ..., 1}
    dark = pretext.jitter_tile_colours(torch.zeros(200, 3, 2, 2), generator=torch.Generator().manual_seed(1))
    assert dark.min() == 0 and dark.max() == pytest.approx(1 / 255)  # clipped at 0, as the 8-bit reference


@pytest.mark.vision  # digits resized to 16 px (torchvision's resize)
@pytest.mark.parametrize("name,chance,threshold", [("rotation", 0.25, 0.8), ("jigsaw", 1 / 24, 0.6)])
def test_pretext_task_is_learnt_on_digits(name, chance, threshold):
    """A few dozen steps on scikit-learn's digits take the task's accuracy well above chance."""
    from selfsup import data

    torch.manual_seed(0)
    digits = data.load("digits", "train", size=16)
    backbone = build_backbone("convnet", in_channels=1, image_size=16, mean=digits.mean().tolist(),
                              std=digits.std().tolist(), width=8)
    # hidden_dim 128: at its default 1024 the paper-shaped head has 38M weights, whose Adam steps made this
    # check take 44 s on one thread instead of 1.5 s (0.96 and 0.97 of the puzzles named at the end)
    kwargs = {} if name == "rotation" else {"num_permutations": 24, "input_size": 8, "hidden_dim": 128}
    method = METHODS[name](backbone, **kwargs).train()
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    accuracies = []
    for step in range(60):
        index = torch.randint(len(digits), (64,))
        out = method.training_step(Batch([augment.to_float(digits.images[index])], index), Progress(step, 60, 20))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        accuracies.append(out["task_accuracy"].item())
    assert accuracies[0] < chance + 0.15
    assert np.mean(accuracies[-10:]) > threshold
