"""The selfsup command line: list, pretrain -> evaluate -> embed -> plot, and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


ROOT = Path(__file__).resolve().parent.parent


def selfsup(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfsup.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.fixture
def here(monkeypatch, capsys):
    """The command line run in this process (no interpreter start-up, which is most of a short
    command's time), as ``here(*args)`` -> an object with returncode, stdout and stderr."""
    from selfsup import cli

    monkeypatch.setattr(cli.common, "tune_allocator", lambda: None)  # process-wide malloc settings: the CLI's, not a test's

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            code = cli.main(list(args))
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return run


def test_list_names_every_method_and_recipe():
    out = selfsup("list")
    assert out.returncode == 0, out.stderr
    for word in ("simclr", "SimCLR", "moco", "MoCo", "convnet", "fashion_mnist", "recipes/simclr_fashion_mnist.yaml"):
        assert word in out.stdout
    from selfsup.methods import METHODS

    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("  ")}
    for name, cls in METHODS.items():  # every method, with what it learns from
        kinds = " | ".join(getattr(cls, "data_kinds", (cls.data_kind,)))
        assert f"[{kinds}{' + labels' if cls.needs_labels else ''}]" in lines[name]
    assert "[images + labels]" in lines["supcon"] and "[images]" in lines["instdisc"]
    assert "[sequences]" in lines["cpc_sequence"] and "wav [sequences]" in out.stdout
    assert "[images | image_pairs]" in lines["dense_object_net"] and "[video]" in lines["tcn"]


def test_version_names_selfsup_and_the_torch_it_runs_on(here):
    # What a bug report needs first: the package's version and the installed torch pair, as pip sees them.
    from importlib.metadata import version

    import selfsup as package

    out = here("--version")
    assert out.returncode == 0, out.stderr
    source = ""
    if (ROOT / ".git").exists():  # a checkout: the commit it runs, which an editable install's version does not follow
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=9", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        if commit and (dirty or f"+g{commit}" not in package.__version__):
            source = f", source at git {commit}" + (" with uncommitted changes" if dirty else "")
    assert out.stdout.strip() == (f"selfsup {package.__version__}{source} (torch {version('torch')}, "
                                  f"torchvision {version('torchvision')})")


def test_version_is_worked_out_only_when_asked(monkeypatch):
    # Building the parser (every command does) runs no git: only --version does.
    from selfsup.cli import arguments

    calls = []
    monkeypatch.setattr(arguments, "version_text", lambda: calls.append(1) or "v")
    arguments.parse_args(["list"])
    assert calls == []
    with pytest.raises(SystemExit):
        arguments.parse_args(["--version"])
    assert calls == [1]


def assert_one_line_error(args, message, run=selfsup):
    out = run(*args)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("selfsup: error:") and message in last, out.stderr


@pytest.mark.parametrize("args,message", [
    (["pretrain", "recipes/simclr_fashion_mnist.yaml", "train.epohcs=1"], "train.epohcs: Key 'epohcs' not in 'TrainConfig'"),
    (["pretrain", "recipes/missing.yaml"], "recipe recipes/missing.yaml does not exist"),
    (["pretrain"], "name a recipe (selfsup pretrain recipes/simclr_fashion_mnist.yaml"),
    (["pretrain", "data.name=fashion_mnist", "data.root=/nonexistent/fm"], "/nonexistent/fm"),
    (["pretrain", "data.name=imagenet"], "unknown dataset 'imagenet'"),
    (["evaluate", "linear", "/nonexistent.ckpt"], "checkpoint /nonexistent.ckpt does not exist"),
])
def test_user_errors_are_one_line(args, message, here):
    assert_one_line_error(args, message, here)


def test_corrupt_idx_file_is_reported_by_name(tmp_path, here):
    folder = tmp_path / "fm"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (folder / name).write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 3)  # header cut short
    assert_one_line_error(["pretrain", "data.name=fashion_mnist", f"data.root={folder}"], "train-images-idx3-ubyte", here)


def test_empty_image_folder_is_reported(tmp_path, here):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(["pretrain", "data.name=folder", f"data.root={tmp_path / 'empty'}", "data.size=16"], "empty",
                          here)


def pretrain_digits(run: Path, *overrides: str) -> subprocess.CompletedProcess:
    out = selfsup("pretrain", "data.name=digits", "data.size=16", "backbone.width=8", "train.epochs=1",
                  "train.batch_size=64", "train.progress=false", f"train.out_dir={run}", *overrides)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One SimCLR run on digits, shared by the tests that evaluate it: (run folder, pretrain output)."""
    run = tmp_path_factory.mktemp("cli") / "run"
    return run, pretrain_digits(run, "method_args.proj_hidden_dim=32", "optim.warmup_epochs=0", "eval.embedding_map=tsne")


def test_pretrain_evaluate_embed_plot_round_trip(digits_run, tmp_path, here):
    run, out = digits_run
    summary = json.loads(out.stdout.splitlines()[0])
    results = json.loads((run / "results.json").read_text())["evaluations"]
    for key in ("linear", "knn"):  # what the command prints is the run's file, beside its own floor
        assert summary[f"{key}_accuracy"] == round(results[key]["accuracy"], 4)
        assert f"{key} accuracy: {100 * results[key]['accuracy']:.2f}%" in out.stdout
    # The encoder trained: its answers are not its floor's. One of the two can equal its floor by chance (360
    # test digits; with AVX2 kernels the linear probe read 93.61% for both), not both.
    assert any(results[key]["accuracy"] != results[key]["random_init"]["accuracy"] for key in ("linear", "knn"))
    for name in ("curves.png", "tsne.png", "results.json", "logs/metrics.csv", "test_embeddings.npy"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    ckpt = run / "checkpoints" / "last.ckpt"

    knn = here("evaluate", "knn", str(ckpt))
    assert knn.returncode == 0, knn.stderr[-2000:]
    assert knn.stdout.startswith("knn: ") and str(run / "evaluations" / "knn.json") in knn.stdout
    assert json.loads((run / "evaluations" / "knn.json").read_text())["accuracy"] == pytest.approx(
        summary["knn_accuracy"], abs=1e-4)

    linear = here("evaluate", "linear", str(ckpt))
    assert linear.returncode == 0, linear.stderr[-2000:]
    assert json.loads((run / "evaluations" / "linear.json").read_text())["accuracy"] == pytest.approx(
        summary["linear_accuracy"], abs=1e-3)

    results = json.loads((run / "results.json").read_text())
    assert {"linear", "knn", "fewshot_5way_1shot", "fewshot_5way_5shot", "retrieval"} <= set(results["evaluations"])
    assert (run / "retrieval.png").is_file() and (run / "views.png").is_file() and (run / "config.yaml").is_file()

    embed = here("embed", str(ckpt), "digits", "--out", str(tmp_path / "emb"))
    assert embed.returncode == 0, embed.stderr[-2000:]
    features = np.load(tmp_path / "emb" / "digits_test.npy")
    assert features.shape == (360, 64)
    assert np.array_equal(np.load(tmp_path / "emb" / "digits_test_labels.npy"), np.load(run / "test_embeddings_labels.npy"))
    assert np.allclose(features, np.load(run / "test_embeddings.npy"), atol=1e-4)

    # Tables that join every embedding back to its row: a standard set by position, a folder by file.
    table = here("embed", str(ckpt), "digits", "--out", str(tmp_path / "emb"), "--format", "csv")
    assert table.returncode == 0, table.stderr[-2000:]
    import csv

    with open(tmp_path / "emb" / "digits_test.csv") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["index"]) for r in rows] == list(range(360))
    assert [int(r["label"]) for r in rows] == np.load(run / "test_embeddings_labels.npy").tolist()
    assert rows[7]["class"] == rows[7]["label"]  # digits' class names are the digits
    assert np.allclose([[float(r[f"f{d}"]) for d in range(64)] for r in rows], features, atol=1e-6)
    with open(tmp_path / "emb" / "digits_test_rows.csv") as file:  # beside the .npy files
        assert [int(r["index"]) for r in csv.DictReader(file)] == list(range(360))

    plot = here("plot", str(run), "--method", "tsne")
    assert plot.returncode == 0, plot.stderr[-2000:]


def test_python_dash_m_selfsup_is_the_command_line():
    def python_m_selfsup(*args):
        return subprocess.run([sys.executable, "-m", "selfsup", *args], capture_output=True, text=True,
                              cwd=ROOT, timeout=300)

    out = python_m_selfsup("list")
    assert out.returncode == 0, out.stderr
    assert "methods:" in out.stdout and "simclr" in out.stdout
    assert python_m_selfsup("pretrain", "recipes/missing.yaml").returncode == 2  # the usage-error status comes through


def test_evaluations_use_the_methods_eval_encoder(tmp_path, here):
    # DINO is evaluated on its teacher: the CLI's kNN must equal the end-of-run kNN, which uses
    # eval_encoder(), and differ from the student's.
    run = tmp_path / "dino"
    pretrain_digits(run, "method=dino", "method_args.out_dim=64", "method_args.hidden_dim=32",
                    "method_args.bottleneck_dim=16", "augment.n_local=2", "augment.local.size=8", "eval.plots=false")
    knn = here("evaluate", "knn", str(run / "checkpoints" / "last.ckpt"))
    assert knn.returncode == 0, knn.stderr[-2000:]
    teacher = json.loads((run / "results.json").read_text())["knn_accuracy"]
    assert json.loads((run / "evaluations" / "knn.json").read_text())["accuracy"] == pytest.approx(teacher, abs=1e-6)


def test_transfer_fewshot_and_finetune_write_their_entries(digits_run, here):
    run, _ = digits_run
    ckpt = str(run / "checkpoints" / "last.ckpt")
    fewshot = here("evaluate", "fewshot", ckpt, "--shots", "1", "--episodes", "50", "--classes", "5,6,7,8,9")
    assert fewshot.returncode == 0, fewshot.stderr[-2000:]
    entry = json.loads((run / "evaluations" / "fewshot_5way_1shot.json").read_text())
    assert entry["classes"] == [5, 6, 7, 8, 9] and entry["episodes"] == 50
    assert entry["random_init"]["accuracy"] != entry["accuracy"] and "ci95" in entry["random_init"]
    finetune = here("evaluate", "finetune", ckpt, "--labels", "10%", "--seeds", "0,1", "--steps", "5")
    assert finetune.returncode == 0, finetune.stderr[-2000:]
    row = json.loads((run / "evaluations" / "finetune.json").read_text())["fractions"]["0.1"]
    assert row["labels"] == 144 and row["seeds"] == [0, 1]  # round(0.1 * 1437) digits
    bad = here("evaluate", "finetune", ckpt, "--labels", "150%")
    assert bad.returncode == 2 and "percentages in (0, 100]" in bad.stderr
    transfer = here("evaluate", "transfer", ckpt)
    assert transfer.returncode == 2 and "needs --data" in transfer.stderr.strip().splitlines()[-1]
    # digits has 1,437 training images: 0.5% keeps 7 rows for 10 classes; classes 50 and 60 do not exist.
    tiny = here("evaluate", "finetune", ckpt, "--labels", "0.5%", "--steps", "1")
    assert tiny.returncode == 2 and "fewer than the 10 classes" in tiny.stderr and "Traceback" not in tiny.stderr
    absent = here("evaluate", "fewshot", ckpt, "--way", "2", "--classes", "50,60", "--episodes", "5", "--no-floor")
    assert absent.returncode == 2 and "[50, 60] do not occur" in absent.stderr and "Traceback" not in absent.stderr


@pytest.mark.parametrize("flags,words", [(["knn", "--k", "0"], "--k: expected a whole number >= 1"),
                                         (["knn", "--temperature", "nan"], "--temperature: expected a number > 0"),
                                         (["fewshot", "--way", "1"], "at least 2 classes"),
                                         (["fewshot", "--classes", "5,6,7"], "fewer than --way 5"),
                                         (["fewshot", "--shots", "0"], "--shots: expected whole numbers >= 1"),
                                         (["correspondence", "--images", "0"], "--images: expected a whole number"),
                                         (["retrieval", "--recall-k", "0"], "--recall-k: expected a whole number")])
def test_evaluate_refuses_impossible_settings_before_loading_anything(flags, words, capsys):
    from selfsup.cli import parse_args

    with pytest.raises(SystemExit) as stop:
        parse_args(["evaluate", flags[0], "nowhere.ckpt", *flags[1:]])
    assert stop.value.code == 2 and words in capsys.readouterr().err


def test_sweep_takes_settings_after_its_options_as_pretrain_does():
    from selfsup.cli import parse_args

    args = parse_args(["sweep", "recipe.yaml", "--seeds", "1", "method_args.temperature=0.1,0.2", "train.epochs=1"])
    assert args.seeds == 1 and args.overrides == ["method_args.temperature=0.1,0.2", "train.epochs=1"]


def labelled_folder(root: Path, count: int = 12, seed: int = 0) -> Path:
    """train/ and test/ with a dark and a bright class of RGB 24x24 images: trivially separable."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for name, colour in (("dark", 40), ("bright", 210)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(colour + rng.normal(0, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, "RGB").save(folder / f"{i}.png")
    return root


def test_transfer_to_a_labelled_folder_of_rgb_images(digits_run, tmp_path, here):
    # A user's folder: train/ and test/ with one subfolder per class, RGB and larger than the 16x16
    # gray digits the checkpoint was trained on; transfer converts them to 1x16x16.
    labelled_folder(tmp_path / "photos")
    run, _ = digits_run
    out = here("evaluate", "transfer", str(run / "checkpoints" / "last.ckpt"), "--data", str(tmp_path / "photos"))
    assert out.returncode == 0, out.stderr[-2000:]
    entry = json.loads((run / "evaluations" / "transfer_photos.json").read_text())
    assert entry["data"] == "photos" and "1x16x16" in entry["protocol"]
    assert entry["linear"] == 1.0 and entry["knn"] == 1.0  # dark and bright are trivially separable
    pyarrow = pytest.importorskip("pyarrow.parquet")
    out = here("embed", str(run / "checkpoints" / "last.ckpt"), str(tmp_path / "photos"), "--split", "train",
               "--format", "parquet", "--out", str(tmp_path / "emb"))
    assert out.returncode == 0, out.stderr[-2000:]
    table = pyarrow.read_table(tmp_path / "emb" / "photos_train.parquet").to_pydict()
    expected = sorted(f"{name}/{i}.png" for name in ("bright", "dark") for i in range(12))
    assert sorted(table["file"]) == expected and len(table["embedding"][0]) == 64
    assert all(cls == path.split("/")[0] for cls, path in zip(table["class"], table["file"]))


def test_label_methods_refuse_unlabelled_data_in_one_line(tmp_path):
    method = "supcon"  # the check is the engine's, for every method with needs_labels
    from PIL import Image

    folder = tmp_path / "flat"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):  # images straight in the folder: no class subfolders, so no labels
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8), "RGB").save(folder / f"{i}.png")
    assert_one_line_error(["pretrain", f"method={method}", "data.name=folder", f"data.root={folder}", "data.size=12",
                           "train.batch_size=4", f"train.out_dir={tmp_path / 'run'}"],
                          f"method {method} learns from class labels, but data.name=folder has none")


def test_evaluate_root_folder_is_filed_under_the_folders_name(digits_run, tmp_path, here):
    # --root DIR alone is read as a labelled folder: its result must not overwrite the run's own entry.
    run, _ = digits_run
    ckpt = str(run / "checkpoints" / "last.ckpt")
    own = run / "evaluations" / "knn.json"
    if not own.is_file():
        assert here("evaluate", "knn", ckpt, "--no-floor").returncode == 0
    before = own.read_bytes()
    out = here("evaluate", "knn", ckpt, "--root", str(labelled_folder(tmp_path / "shots", count=4)), "--no-floor")
    assert out.returncode == 0, out.stderr[-2000:]
    assert own.read_bytes() == before and "digits" in json.loads(before)["data"]
    entry = json.loads((run / "evaluations" / "knn_shots.json").read_text())
    assert entry["data"] == "shots" and "on shots ->" in out.stdout


def test_graph_runs_refuse_other_data_in_one_line(tmp_path, here):
    # The graph encoder embeds its own graph's nodes: --data asked for another graph cannot be evaluated.
    run = tmp_path / "dgi"
    out = here("pretrain", "recipes/dgi_sbm.yaml", "train.epochs=2", "backbone.width=2", "train.knn_every=0",
               "train.progress=false", "eval.plots=false", "eval.floor=false", f"train.out_dir={run}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert_one_line_error(["evaluate", "linear", str(run / "checkpoints" / "last.ckpt"), "--data", "karate"],
                          "trained on the graph 'sbm'", here)
    assert not (run / "evaluations" / "linear_karate.json").exists()


def test_evaluate_probes_the_runs_max_samples_subset(tmp_path, here, knn_by_hand):
    # The run's own numbers were measured on its seeded data.max_samples subset, with its own kNN settings:
    # evaluate reproduces them.
    run = tmp_path / "subset"
    pretrain_digits(run, "data.max_samples=300", "method_args.proj_hidden_dim=16", "eval.plots=false",
                    "eval.floor=false", "eval.save_embeddings=false", "train.knn_every=0", "eval.knn_k=7",
                    "eval.knn_temperature=0.5")
    results = json.loads((run / "results.json").read_text())["evaluations"]
    for protocol in ("knn", "linear"):
        out = here("evaluate", protocol, str(run / "checkpoints" / "last.ckpt"), "--no-floor")
        assert out.returncode == 0, out.stderr[-2000:]
        entry = json.loads((run / "evaluations" / f"{protocol}.json").read_text())
        assert entry["accuracy"] == pytest.approx(results[protocol]["accuracy"], abs=1e-3 if protocol == "linear" else 1e-9)
        if protocol == "knn":
            assert (entry["k"], entry["temperature"]) == (7, 0.5)  # the run's, not the command line's defaults
    # --whole-split: every training image of digits (1,437), named apart, the run's own entry kept.
    out = here("evaluate", "knn", str(run / "checkpoints" / "last.ckpt"), "--no-floor", "--whole-split")
    assert out.returncode == 0, out.stderr[-2000:]
    whole = json.loads((run / "evaluations" / "knn_whole_split.json").read_text())
    assert json.loads((run / "evaluations" / "knn.json").read_text())["accuracy"] == pytest.approx(
        results["knn"]["accuracy"], abs=1e-9)
    from selfsup import cli, evaluate
    from selfsup.data import load

    cfg, encoder, (channels, size), _, _ = cli.common.load_encoder(str(run / "checkpoints" / "last.ckpt"))
    train, test = (load("digits", split, size=size, channels=channels) for split in ("train", "test"))
    assert len(train) == 1437
    train_x, test_x = (evaluate.extract_features(encoder, d.inputs) for d in (train, test))
    predicted = knn_by_hand(train_x.numpy(), train.labels.numpy(), test_x.numpy(), 7, 0.5)
    assert whole["accuracy"] == pytest.approx(float(np.mean(np.asarray(predicted) == test.labels.numpy())), abs=1e-9)


def test_embed_folders_keep_their_own_names_and_a_loose_checkpoint_its_own_folder(digits_run, tmp_path, here):
    import shutil

    run, _ = digits_run
    loose = tmp_path / "downloads" / "x.ckpt"  # a checkpoint outside any run folder
    loose.parent.mkdir()
    shutil.copy(run / "checkpoints" / "last.ckpt", loose)
    for seed, name in enumerate(("cats", "dogs")):
        out = here("embed", str(loose), str(labelled_folder(tmp_path / name, count=2, seed=seed)))
        assert out.returncode == 0, out.stderr[-2000:]
    embeddings = tmp_path / "downloads" / "embeddings"  # beside the checkpoint, not in its grandparent
    assert not (tmp_path / "embeddings").exists()
    cats, dogs = (np.load(embeddings / f"{name}_test.npy") for name in ("cats", "dogs"))
    assert cats.shape == dogs.shape == (4, 64) and not np.allclose(cats, dogs)
    assert_one_line_error(["embed", str(loose), str(tmp_path / "cats"), "--root", str(tmp_path)], "--root", here)


@pytest.mark.parametrize("args,message", [
    (["--slurm", "slurm_partition", "--executor", "submitit-local"], "--slurm 'slurm_partition': expected KEY=VALUE"),
    (["--slurm", "timeout_min=60", "--summary-only"], "need --executor slurm"),
    (["--seeds", "0", "--summary-only"], "--seeds 0"),
])
def test_sweep_command_line_mistakes_are_one_line(args, message, tmp_path, here):
    assert_one_line_error(["sweep", "recipes/simclr_fashion_mnist.yaml", "optim.lr=0.1,0.2", "--out", str(tmp_path),
                           *args], message, here)
    assert not any(tmp_path.iterdir())  # nothing was started


def test_sweep_off_a_cluster_and_an_unknown_submitit_parameter_are_one_line(tmp_path, here, monkeypatch):
    pytest.importorskip("submitit")
    from selfsup.sweep import runner

    sweep = ["sweep", "recipes/simclr_fashion_mnist.yaml", "optim.lr=0.1,0.2", "--out", str(tmp_path)]
    monkeypatch.setattr(runner.shutil, "which", lambda name: None)  # no srun here (was submitit's traceback)
    assert_one_line_error([*sweep, "--executor", "slurm"], "--executor slurm: this machine has no `srun`", here)
    assert_one_line_error([*sweep, "--executor", "submitit-local", "--slurm", "bogus_key=3"],
                          "--slurm: Unknown executor 'bogus' in parameter 'bogus_key'", here)
    assert not list(tmp_path.rglob("*.yaml")) and not list(tmp_path.rglob("*.ckpt"))  # no run was started


def test_a_corrupt_study_file_is_one_line(tmp_path, here):
    study = tmp_path / "study.yaml"
    study.write_text("name: broken\ngrid: {optim.lr: [0.1, 0.2]\nseeds: 2\n")  # an unclosed mapping
    assert_one_line_error(["sweep", str(study), "--summary-only", "--out", str(tmp_path)],
                          f"{study} is not valid YAML", here)


def test_report_and_evaluate_options_that_would_be_ignored_are_refused(digits_run, here):
    run, _ = digits_run
    ckpt = str(run / "checkpoints" / "last.ckpt")
    assert_one_line_error(["report", str(run), "--table", "--headlines"], "choose one", here)
    assert_one_line_error(["evaluate", "finetune", ckpt, "--no-floor", "--labels", "10%", "--seeds", "0", "--steps",
                           "1"], "--no-floor", here)
    assert_one_line_error(["evaluate", "zeroshot", ckpt, "--no-floor"], "--no-floor", here)


def test_report_table_out_keeps_the_earlier_file_when_writing_fails(tmp_path, here, monkeypatch):
    from selfsup import evaluate

    out = tmp_path / "table.md"
    out.write_text("the earlier table\n")
    monkeypatch.setattr(evaluate, "results_table", lambda runs: "| run |\n| \ud800 |\n")  # not encodable
    with pytest.raises(UnicodeEncodeError):
        here("report", str(tmp_path), "--table", "--out", str(out))
    assert out.read_text() == "the earlier table\n" and [p.name for p in tmp_path.iterdir()] == ["table.md"]


@pytest.mark.parametrize(("words", "recipe", "overrides", "resume"), [
    (["r.yaml", "--resume", "train.epochs=20"], "r.yaml", ["train.epochs=20"], "yes"),  # the README's "extend a run"
    (["--resume", "runs/x/last.ckpt", "train.epochs=3"], "runs/x/last.ckpt", ["train.epochs=3"], "yes"),
    (["r.yaml", "a=1", "--resume", "auto", "b=2"], "r.yaml", ["a=1", "b=2"], "auto"),
    (["r.yaml", "--resume"], "r.yaml", [], "yes"),
    (["r.yaml", "a=1"], "r.yaml", ["a=1"], None),
])
def test_resume_never_takes_the_override_or_checkpoint_after_it_as_its_value(words, recipe, overrides, resume):
    from selfsup.cli import parse_args

    args = parse_args(["pretrain", *words])
    assert (args.recipe, args.overrides, args.resume) == (recipe, overrides, resume)


def test_evaluate_stage_probes_a_pooled_stage_with_its_own_floor(digits_run, here, knn_by_hand, tmp_path, monkeypatch):
    # --stage N: kNN on the backbone's stage-N map averaged over positions (Goyal et al. 2019's layer-wise
    # probe), read here by hand through a forward hook on the ConvNet's second max-pooling (its input is stage 1).
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    run, _ = digits_run
    ckpt = str(run / "checkpoints" / "last.ckpt")
    out = here("evaluate", "knn", ckpt, "--stage", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    entry = json.loads((run / "evaluations" / "knn_stage1.json").read_text())
    assert entry["stage"] == 1 and entry["protocol"].startswith("features: the backbone's stage 1 ")
    import torch

    from selfsup import cli
    from selfsup.data import load

    cfg, encoder, (channels, size), _, make_scratch = cli.common.load_encoder(ckpt)
    train, test = (load("digits", split, size=size, channels=channels) for split in ("train", "test"))

    def by_hand(net, images):
        seen, pools = [], [m for m in net.net.modules() if isinstance(m, torch.nn.MaxPool2d)]
        handle = pools[1].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].mean(dim=(2, 3))))
        with torch.no_grad():
            net.eval()(images.float() / 255)
        handle.remove()
        return seen[0].numpy()

    train_x, test_x = by_hand(encoder, train.images), by_hand(encoder, test.images)
    assert train_x.shape[1] == 16  # backbone.width=8: the second stage is 16 channels wide
    predicted = knn_by_hand(train_x, train.labels.numpy(), test_x, 200, 0.1)
    assert entry["accuracy"] == pytest.approx(float(np.mean(np.asarray(predicted) == test.labels.numpy())), abs=1e-6)
    # Its floor is the same stage of the run's random initialisation (torch.manual_seed(train.seed) before the build).
    torch.manual_seed(cfg.train.seed)
    scratch = make_scratch()
    predicted = knn_by_hand(by_hand(scratch, train.images), train.labels.numpy(), by_hand(scratch, test.images), 200, 0.1)
    assert entry["random_init"]["accuracy"] == pytest.approx(float(np.mean(np.asarray(predicted) == test.labels.numpy())),
                                                             abs=1e-6)
    # (1e-6: one test image of 360 moves an accuracy by 2.8e-3; the entries hold float32.)
    # The last stage averaged is the backbone's own output: the run's plain kNN.
    assert here("evaluate", "knn", ckpt, "--stage", "3", "--no-floor").returncode == 0
    assert json.loads((run / "evaluations" / "knn_stage3.json").read_text())["accuracy"] == pytest.approx(
        json.loads((run / "results.json").read_text())["evaluations"]["knn"]["accuracy"], abs=1e-6)
    assert_one_line_error(["evaluate", "knn", ckpt, "--stage", "4"], "convnet has stages 0 to 3", here)
    assert_one_line_error(["evaluate", "finetune", ckpt, "--stage", "1"], "--stage is for the frozen protocols", here)


def test_a_simclr_checkpoint_from_before_the_official_head_still_evaluates(tmp_path, here):
    """Checkpoints written before method_args.proj_last_bn existed hold the head without its last BatchNorm and
    no such key: they are read with proj_last_bn=false (SimCLR.legacy_args), said on stderr."""
    from selfsup.engine import load_checkpoint, save_atomic

    run = tmp_path / "old"
    pretrain_digits(run, "method_args.proj_hidden_dim=16", "method_args.proj_last_bn=false", "eval.linear=false",
                    "eval.knn=false", "train.knn_every=0", "eval.plots=false")
    ckpt = run / "checkpoints" / "last.ckpt"
    state = load_checkpoint(ckpt)
    state["config"]["method_args"].pop("proj_last_bn")  # as the earlier version wrote it
    state.pop("integrity", None)
    save_atomic(state, ckpt)
    knn = here("evaluate", "knn", str(ckpt), "--no-floor")
    assert knn.returncode == 0, knn.stderr[-2000:]
    assert "predates method_args.proj_last_bn: read with proj_last_bn=False" in knn.stderr


def test_selfsups_own_warnings_are_one_line_each(tmp_path):
    # A skipped image is a line a user reads: not Python's "file:line: Category: ..." and the source line after it.
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((12, 12, 3), 40 * i, np.uint8)).save(tmp_path / "photos" / name / f"{i}.png")
    (tmp_path / "photos" / "a" / "broken.png").write_bytes(b"not a png")
    out = selfsup("pack", str(tmp_path / "photos"), str(tmp_path / "packed"), "--size", "8")
    assert out.returncode == 0, out.stderr
    lines = [line.split("\r")[-1].strip() for line in out.stderr.splitlines()]
    assert f"selfsup: warning: skipped 1 of 5 image files under {tmp_path / 'photos'}" in lines, out.stderr
    assert "SkippedImageWarning" not in out.stderr and "warnings.warn" not in out.stderr
    assert not any(line.startswith("return ") for line in lines), out.stderr


def test_embed_names_a_file_whose_name_is_not_utf8_and_writes_the_rows_first(digits_run, tmp_path, here):
    # A name from an old Latin-1 disk: its bytes are not UTF-8 (Python holds them as surrogate escapes). It was a
    # UnicodeEncodeError after the .npy arrays were written, without the file saying which image each row is.
    import os

    run, _ = digits_run
    folder = labelled_folder(tmp_path / "latin", count=2)
    odd = os.fsdecode(b"caf\xe9.png")
    os.rename(folder / "train" / "dark" / "0.png", folder / "train" / "dark" / odd)
    for fmt in ("npy", "csv"):
        out = here("embed", str(run / "checkpoints" / "last.ckpt"), str(folder), "--split", "train",
                   "--format", fmt, "--out", str(tmp_path / fmt))
        assert out.returncode == 0, out.stderr[-2000:]
        table = (tmp_path / fmt / ("latin_train_rows.csv" if fmt == "npy" else "latin_train.csv")).read_bytes()
        text = table.decode("utf-8")  # valid UTF-8 throughout
        assert "dark/caf\\xe9.png" in text and text.count("\n") == 5  # a header and one row per image
    # A folder without train/ and test/ (the README's `selfsup embed CKPT path/to/images/`): its whole self, by
    # default (the default split, test, was a one-line refusal there).
    out = here("embed", str(run / "checkpoints" / "last.ckpt"), str(folder / "test"), "--out", str(tmp_path / "plain"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert np.load(tmp_path / "plain" / "test_train.npy").shape == (4, 64)
