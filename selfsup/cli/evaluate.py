"""``selfsup evaluate``: the frozen-feature protocols, fine-tuning, zero-shot, correspondence and video."""

from __future__ import annotations

import argparse
from pathlib import Path

from selfsup.cli import common
from selfsup.errors import DataError, UsageError


def cmd_evaluate(args: argparse.Namespace) -> int:
    from selfsup import evaluate
    from selfsup.data import kind_of
    from selfsup.errors import ConfigError

    common.tune_allocator()
    if args.no_floor and args.protocol in ("finetune", "zeroshot"):
        raise UsageError(f"--no-floor: evaluate {args.protocol} computes no random-init floor"
                         + (" (its baseline is the same network trained from scratch)" if args.protocol == "finetune"
                            else "") + "; leave --no-floor out")
    if args.protocol == "zeroshot":
        return _zero_shot(args)
    if args.protocol == "correspondence":
        return _correspondence(args)
    if args.protocol in ("propagate", "temporal"):
        return _video(args)
    cfg, encoder, (channels, size), device, make_scratch = common.load_encoder(args.checkpoint)
    # The run's own kNN settings unless the command line names others: its entry replaces the run's `knn`.
    args.k = cfg.eval.knn_k if args.k is None else args.k
    args.temperature = cfg.eval.knn_temperature if args.temperature is None else args.temperature
    if args.stage is not None:
        encoder, make_scratch = _stage_encoder(args, cfg, encoder, make_scratch, channels, size, device)
    if args.protocol == "transfer" and args.data is None:
        raise ConfigError("evaluate transfer needs --data NAME or a folder (the dataset to transfer to)")
    whole = args.whole_split and cfg.data.max_samples is not None
    train = common.dataset(cfg, args.data, args.root, "train", channels, size, as_run=not args.whole_split)
    test = common.dataset(cfg, args.data, args.root, "test", channels, size)
    if train.labels is None or test.labels is None:
        raise DataError(f"dataset {train.name!r} has no labels; evaluation needs a labelled train and test split "
                        f"(for a folder: one subfolder per class, in train/ and test/)")
    *_, data, own = common.data_choice(cfg, args.data, args.root)
    # The whole split's numbers are named apart from the run's own (its max_samples subset's), never over them.
    suffix = ("" if own and args.protocol != "transfer" else f"_{data}") + ("_whole_split" if whole and own else "")
    suffix += "" if args.stage is None else f"_stage{args.stage}"
    if args.protocol == "finetune":
        if kind_of(cfg.data) not in ("images", "image_text"):
            raise DataError(f"evaluate finetune works on images; {cfg.method} was trained on "
                            f"{kind_of(cfg.data)} (use linear, knn or fewshot)")
        from selfsup.data import StreamedDataset

        # Fine-tuning draws label subsets as tensors: a streamed split is read whole.
        train, test = (s.in_memory() if isinstance(s, StreamedDataset) else s for s in (train, test))
        for share in args.labels:  # a share too small for every class to keep a row: say so before any training
            try:
                evaluate.label_subset(train.labels, share, seed=args.seeds[0])
            except ValueError as error:
                raise UsageError(f"--labels {100 * share:g}% of {data}'s {len(train.labels)} training images: "
                                 f"{error}") from None
        entries = {f"finetune{suffix}": evaluate.finetune_entry(
            encoder, make_scratch, train.images, train.labels, test.images, test.labels, data=data,
            fractions=args.labels, seeds=args.seeds, steps=args.steps, device=device, progress=True)}
    else:
        from selfsup.engine.floor import random_init_floor, seeded_build, with_floor

        def measure(net, progress: bool = False) -> dict:
            return _frozen_entries(args, net, train, test, kind=kind_of(cfg.data), device=device, data=data,
                                   suffix=suffix, shape=(channels, size), progress=progress)

        entries = measure(encoder, progress=True)
        if not args.no_floor:  # beside every number, the same evaluation at random initialisation
            settings = {key: getattr(args, key) for key in ("protocol", "k", "temperature", "recall_k", "way",
                                                            "shots", "query", "episodes", "classes", "stage")}
            with_floor(entries, random_init_floor(seeded_build(make_scratch, cfg.train.seed), measure,
                                                  data={"train": train, "test": test}, settings=settings))
    if args.stage is not None:  # said in the entry, so that a report shows which features were probed
        for entry in entries.values():
            entry["stage"] = args.stage
            entry["protocol"] = (f"features: the backbone's stage {args.stage} (0 the finest) averaged over positions "
                                 f"(Goyal et al. 2019's layer-wise probe); {entry.get('protocol', '')}")
    common.write_entries(args.checkpoint, entries, data)
    return 0


def _stage_encoder(args: argparse.Namespace, cfg, encoder, make_scratch, channels: int, size: int, device):
    """``--stage N``: the encoder and its random-init factory read at the backbone's stage N, averaged over
    positions (:class:`selfsup.nn.dense.PooledStage`); refused in one line where there is no such stage."""
    import torch

    from selfsup.data import kind_of
    from selfsup.nn.dense import PooledStage, stage_features

    if args.protocol == "finetune":
        raise UsageError("--stage: evaluate finetune trains the whole encoder; --stage is for the frozen protocols "
                         "(linear, knn, fewshot, retrieval, transfer)")
    if kind_of(cfg.data) not in ("images", "image_text"):
        raise UsageError(f"--stage reads an image backbone's feature maps; {cfg.method} was trained on "
                         f"{kind_of(cfg.data)}")
    try:
        with torch.no_grad():
            count = len(stage_features(encoder, torch.zeros(1, channels, size, size, device=device)))
    except (ValueError, AttributeError):
        raise UsageError(f"--stage: {cfg.method}'s evaluation encoder ({type(encoder).__name__}"
                         f"{'' if not hasattr(encoder, 'net') else ' of ' + type(encoder.net).__name__}) has no stages "
                         f"selfsup can read (the ConvNet's four, a torchvision ResNet's stem and layer1-4)") from None
    if not 0 <= args.stage < count:
        raise UsageError(f"--stage {args.stage}: {cfg.backbone.name} has stages 0 to {count - 1} (0 the finest)")
    return PooledStage(encoder, args.stage).eval(), lambda: PooledStage(make_scratch(), args.stage)


def _frozen_entries(args: argparse.Namespace, encoder, train, test, *, kind: str, device, data: str, suffix: str,
                    shape: tuple[int, int], progress: bool = False) -> dict:
    """The results entries of a frozen-feature protocol (linear, knn, fewshot, retrieval, transfer)."""
    from selfsup import evaluate

    train_x = evaluate.extract_features(encoder, train.inputs, device=device, progress=progress, kind=kind)
    test_x = evaluate.extract_features(encoder, test.inputs, device=device, kind=kind)
    if args.protocol == "fewshot":
        try:
            entries = {f"fewshot_{args.way}way_{shot}shot{suffix}": evaluate.fewshot_entry(
                test_x, test.labels, data=data, n_way=args.way, k_shot=shot, n_query=args.query,
                episodes=args.episodes, classes=args.classes) for shot in args.shots}
        except ValueError as error:  # --classes that the test split lacks, or too few rows of them
            raise UsageError(f"fewshot on {data}: {error}") from None
        if None in entries.values():
            raise DataError(f"{data}: too few classes with enough test images for {args.way}-way episodes "
                            f"with {args.query} queries")
        return entries
    frozen = evaluate.frozen_evaluations(
        train_x, train.labels, test_x, test.labels, data=data,
        linear=args.protocol in ("linear", "transfer"), knn=args.protocol in ("knn", "transfer"),
        knn_k=args.k, knn_temperature=args.temperature, shots=(),
        recall_ks=args.recall_k if args.protocol == "retrieval" else (), device=device)
    if args.protocol == "transfer":
        channels, size = shape
        return {f"transfer{suffix}": {"data": data, "linear": frozen["linear"]["accuracy"],
                                      "knn": frozen["knn"]["accuracy"],
                                      "protocol": f"{frozen['linear']['protocol']}; {frozen['knn']['protocol']}; "
                                                  f"images converted to {channels}x{size}x{size} as the "
                                                  f"checkpoint was trained"}}
    return {f"{args.protocol}{suffix}": frozen[args.protocol]}


def _zero_shot(args: argparse.Namespace) -> int:
    """``evaluate zeroshot``: an image-text checkpoint's zero-shot classification (prompts of the class
    names) and image<->text retrieval, on its own test split or on ``--data`` (zero-shot transfer)."""
    from selfsup import data as datasets

    cfg, method, (channels, size), device, _ = common.load_method(args.checkpoint)
    if not hasattr(method, "extra_evaluations"):  # the protocol's hook, not a method name
        raise DataError(f"evaluate zeroshot needs an image-text checkpoint (clip); {args.checkpoint} is {cfg.method}")
    if args.data is None and args.root is None:
        test = common.dataset(cfg, None, None, "test", channels, size)
        data, suffix = cfg.data.name, ""
    else:
        # Any labelled image set, captioned with prompts of its class names (a plain image config:
        # the checkpoint's captions do not apply to another dataset).
        images = common.dataset(type(cfg)(), args.data, args.root, "test", channels, size)
        test = datasets.from_templates(images, "test")
        data = common.data_choice(type(cfg)(), args.data, args.root)[2]
        suffix = f"_{data}"
    entries = {f"{key}{suffix}": entry
               for key, entry in method.to(device).extra_evaluations(test, data=data, device=device).items()}
    common.write_entries(args.checkpoint, entries, data)
    return 0


def _correspondence(args: argparse.Namespace) -> int:
    """``evaluate correspondence``: PCK@k of the checkpoint's per-pixel descriptors (a dense method's
    own; any other method's upsampled last feature map) under known warps of test images, beside the
    same network at random initialisation and raw-pixel patches; the matches drawn next to the run."""
    import torch

    from selfsup.engine.floor import random_init_floor, seeded_build, with_floor
    from selfsup.evaluate.correspondence import correspondence_entry
    from selfsup.nn import eval_mode
    from selfsup.nn.dense import UpsampledFeatures

    cfg, method, (channels, size), device, build = common.load_method(args.checkpoint)
    test = common.dataset(cfg, args.data, args.root, "test", channels, size)
    if not hasattr(test, "images"):
        raise DataError(f"evaluate correspondence needs images; {cfg.method} was trained on {cfg.data.name}")
    *_, data, own = common.data_choice(cfg, args.data, args.root)
    suffix = "" if own else f"_{data}"
    images = test.images[:args.images]

    def describe(m):
        encoder = m.descriptor_encoder() if hasattr(m, "descriptor_encoder") else UpsampledFeatures(m.eval_encoder())
        return encoder.to(device).eval()

    picture = common.evaluations_dir(args.checkpoint).parent / f"correspondence{suffix}.png"
    with eval_mode(method):
        entry = correspondence_entry(describe(method), images, data=data, points=args.points, device=device,
                                     picture=picture)
    if not args.no_floor:
        backbone = method.eval_encoder()
        mean, std = (getattr(backbone, key).flatten().tolist() for key in ("mean", "std"))
        fresh = seeded_build(lambda: build(mean, std), cfg.train.seed)
        with torch.no_grad():
            floor = random_init_floor(describe(fresh), lambda encoder: {"correspondence": correspondence_entry(
                encoder, images, data=data, points=args.points, device=device)}, data={"test": test},
                settings={"protocol": "correspondence", "points": args.points, "images": args.images})
        with_floor({"correspondence": entry}, floor)
    common.write_entries(args.checkpoint, {f"correspondence{suffix}": entry}, data)
    print(f"matches drawn in {picture}")
    return 0


def _video(args: argparse.Namespace) -> int:
    """``evaluate propagate`` / ``evaluate temporal`` on held-out videos (the test split of --data, a
    video folder or DAVIS root; default the checkpoint's), beside the same network at random
    initialisation; propagation also beside copying the first mask and raw Lab colours, with
    <run>/propagation.png. Any image checkpoint's encoder can be evaluated so."""
    import torch

    from selfsup import evaluate
    from selfsup.data import load_video_split
    from selfsup.engine.floor import random_init_floor, seeded_build, with_floor
    from selfsup.evaluate import video
    from selfsup.methods.base import FeatureGrid

    cfg, method, (channels, size), device, build = common.load_method(args.checkpoint)
    root = args.data or args.root or (cfg.data.root if cfg.data.name == "video" else None)
    if root is None:
        raise UsageError(f"evaluate {args.protocol} needs --data, a folder of videos or a DAVIS root "
                         f"({cfg.method} was trained on {cfg.data.name})")
    test = load_video_split(root, "test", size=size, channels=channels, max_frames=cfg.data.max_frames)
    data = Path(root).name
    suffix = "" if cfg.data.name == "video" and Path(root) == Path(cfg.data.root or "") else f"_{data}"

    def dense(m):
        return (m.dense_encoder() if hasattr(m, "dense_encoder") else FeatureGrid(m.eval_encoder())).to(device)

    def measure(m) -> dict:
        if args.protocol == "temporal":
            features = evaluate.extract_features(m.eval_encoder().to(device), test.images, device=device)
            return {"temporal": video.temporal_entry(features, test.video, test.time, data=data, scenes=test.scenes,
                                                     tasks=test.tasks)}
        encoder = dense(m)
        return {"propagation": video.propagation_entry(
            test, lambda frames: video.dense_features(encoder, frames, device=device), data=data, topk=args.topk,
            radius=args.radius, context=args.context, temperature=args.propagation_temperature, keep=3)}

    entries = measure(method)
    if not args.no_floor:
        backbone = method.eval_encoder()
        mean, std = (getattr(backbone, key).flatten().tolist() for key in ("mean", "std"))
        fresh = seeded_build(lambda: build(mean, std), cfg.train.seed)
        settings = {"protocol": args.protocol, "topk": args.topk, "radius": args.radius, "context": args.context,
                    "temperature": args.propagation_temperature, "method": cfg.method,
                    "method_args": dict(cfg.method_args)}
        with torch.no_grad():
            floor = random_init_floor(fresh, measure, data={"test": test}, settings=settings)
        with_floor(entries, floor)
    if args.protocol == "propagate":
        entry = entries["propagation"]
        strips = entry.pop("strips")
        grid = video.dense_features(dense(method), test.images[:1], device=device).shape[-1]
        entry["baselines"] = video.propagation_baselines(test, data=data, lab_stride=max(1, size // grid),
                                                         topk=args.topk, radius=args.radius, context=args.context,
                                                         temperature=args.propagation_temperature)
        picture = common.evaluations_dir(args.checkpoint).parent / f"propagation{suffix}.png"
        if strips:
            video.plot_propagation(strips, picture, title=f"{cfg.method}: the first frame's masks propagated "
                                                          f"(J&F {entry['j_and_f']:.3f})")
        rows = [("trained", entry), *(([("random init", entry["random_init"])]) if "random_init" in entry else []),
                *entry["baselines"].items()]
        for key, label in (("j_and_f", "J&F"), ("pck@0.1", "PCK@0.1"), ("pck@0.2", "PCK@0.2")):
            if key in entry:
                print(" | ".join(f"{name} {label} {values[key]:.4f}" for name, values in rows if key in values))
        if strips:
            print(f"propagated masks drawn in {picture}")
    common.write_entries(args.checkpoint, {f"{key}{suffix}": entry for key, entry in entries.items()}, data)
    return 0
