"""selfsup sweep: grids x seeds expanded into ordinary runs, the summary's statistics against numbers
computed here, the verdict's rules, a killed sweep resumed (finished runs kept, the cut one continued),
and submitit's local executor."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfsup import sweep
from selfsup.cli import main
from selfsup.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parent.parent
TINY = ["data.name=digits", "data.size=16", "backbone.width=4", "train.batch_size=128", "train.knn_every=0",
        "eval.plots=false", "eval.save_embeddings=false", "method_args.proj_hidden_dim=16", "method_args.proj_dim=8"]


def write_study(tmp_path: Path, **changes) -> Path:
    spec = {"name": "toy", "claim": "a lower temperature helps", "recipe": str(ROOT / "recipes/simclr_fashion_mnist.yaml"),
            "overrides": [*TINY, "train.epochs=1"], "grid": {"method_args.temperature": [0.2, 0.5]}, "seeds": 2,
            "metrics": ["knn", "linear"], "verdict": {"best": "method_args.temperature=0.2"},
            "out": str(tmp_path / "sweeps"), **changes}
    path = tmp_path / "toy.yaml"
    path.write_text(json.dumps({k: v for k, v in spec.items() if v is not None}))  # JSON is YAML; None: key left out
    return path


def test_a_grid_expands_into_points_times_seeds_of_ordinary_runs(tmp_path):
    study = sweep.load_study(write_study(tmp_path, grid={"a.b": [1, 2, 3], "c": ["x", [1, 2]]}, verdict={}))
    assert [p.name for p in study.points] == ["a.b=1,c=x", "a.b=1,c=[1,2]", "a.b=2,c=x", "a.b=2,c=[1,2]",
                                              "a.b=3,c=x", "a.b=3,c=[1,2]"]
    runs = sweep.expand(study)
    assert len(runs) == 12 and len({r.folder for r in runs}) == 12
    first = runs[0]
    assert first.folder == tmp_path / "sweeps" / "toy" / "a.b_1_c_x" / "seed0"
    assert first.overrides[-4:] == ("train.seed=0", "name=toy-a.b_1_c_x-seed0", f"train.out_dir={first.folder}",
                                    "train.progress=false")
    assert "a.b=1" in first.overrides and "c=[1,2]" in runs[2].overrides and first.status() == "new"
    assert [r.seed for r in runs[:2]] == [0, 1]


def test_a_command_line_sweep_makes_axes_of_comma_lists(tmp_path):
    study = sweep.study_from_command_line(str(ROOT / "recipes/simclr_fashion_mnist.yaml"),
                                          ["optim.lr=0.1,0.3", "train.epochs=2", "augment.view.scale=[0.2,1.0]"],
                                          seeds=3, out=tmp_path)
    assert [p.overrides for p in study.points] == [("optim.lr=0.1",), ("optim.lr=0.3",)]
    assert study.overrides == ["train.epochs=2", "augment.view.scale=[0.2,1.0]"] and study.seeds == [0, 1, 2]
    assert study.name == "simclr_fashion_mnist_lr"
    # Two values that would share one run folder (0.5 and +0.5) are refused, as in a study file.
    with pytest.raises(ConfigError, match="two points share a folder name"):
        sweep.study_from_command_line(str(ROOT / "recipes/simclr_fashion_mnist.yaml"),
                                      ["method_args.temperature=0.5,+0.5"], seeds=1, out=tmp_path)


@pytest.mark.parametrize("change,message", [
    ({"grid": {"x": []}}, "non-empty list"),
    ({"points": [{"name": "a"}]}, "either grid"),
    ({"seeds": 0}, "at least 1"),
    ({"metrics": ["accuracy"]}, "unknown metrics"),
    ({"verdict": {"best": "nowhere"}}, "does not have"),
    ({"verdict": {"winner": "x"}}, "verdict is"),
    ({"verdict": {"better": "method_args.temperature=0.2", "than": "method_args.temperature=0.5"}}, "must be a list"),
    ({"colour": "red"}, "unknown keys"),
    ({"points": [{"name": "a", "seeds": [1, 1]}], "grid": None}, "seeds repeat"),
])
def test_bad_studies_are_named_in_one_line(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        sweep.load_study(write_study(tmp_path, **change))


def test_a_point_with_its_own_seeds_runs_and_is_summarised_over_them(tmp_path):
    study_path = write_study(tmp_path, grid=None, metrics=["knn"], seeds=2,
                             points=[{"name": "a"}, {"name": "b", "seeds": 4, "overrides": ["x=1"]}],
                             verdict={"better": "b", "than": ["a"]})
    study = sweep.load_study(study_path)
    runs = sweep.expand(study)
    assert [(r.point.name, r.seed) for r in runs] == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2), ("b", 3)]
    knn = {("a", 0): 0.70, ("a", 1): 0.74, ("b", 0): 0.80, ("b", 1): 0.84, ("b", 2): 0.82, ("b", 3): 0.78}
    for run in runs:  # results written by hand, as a finished run writes them
        run.folder.mkdir(parents=True)
        (run.folder / "results.json").write_text(json.dumps(
            {"evaluations": {"knn": {"accuracy": knn[run.point.name, run.seed], "random_init": {"accuracy": 0.6}}}}))
    summary = sweep.summarise(study, page_path=tmp_path / "page" / "toy.md")
    b = summary["points"]["b"]["knn"]
    assert b["n"] == 4 and b["mean"] == pytest.approx(0.81)
    std = math.sqrt((0.01 ** 2 + 0.03 ** 2 + 0.01 ** 2 + 0.03 ** 2) / 3)
    assert b["ci95"] == pytest.approx(3.182446305284263 * std / 2)  # t(0.975, 3) from the tables, over 4 seeds
    assert summary["points"]["a"]["knn"]["n"] == 2 and summary["runs"] == 6
    assert summary["point_seeds"] == {"a": [0, 1], "b": [0, 1, 2, 3]}
    text = (tmp_path / "page" / "toy.md").read_text()
    assert "2 points x 2 seeds (0, 1); b: 4 seeds (0, 1, 2, 3)" in text
    assert (tmp_path / "page" / "list.md").read_text().rstrip().endswith("| 6 |")  # the study list counts 6 runs


def test_statistics_by_hand():
    values = [0.80, 0.90, 0.85]
    s = sweep.statistics(values)
    mean = 0.85
    std = math.sqrt(((0.80 - mean) ** 2 + (0.90 - mean) ** 2 + 0) / 2)  # 0.05
    assert s["mean"] == pytest.approx(mean) and s["std"] == pytest.approx(std) and s["n"] == 3
    assert s["ci95"] == pytest.approx(4.302652729911275 * std / math.sqrt(3))  # t(0.975, 2) from the tables
    assert sweep.statistics([0.7]) == {"mean": 0.7, "std": None, "ci95": None, "n": 1}


def _summary(metric="knn", **values):
    """A summary of per-seed values (seeds 0, 1, 2, ...) as collect writes one."""
    return {"points": {name: {metric: {**sweep.statistics(v), "values": list(v), "seeds": list(range(len(v))),
                                       "floor": None, "absent": []}}
                       for name, v in values.items()}, "missing": []}


def _paired_interval(a, b):
    """scipy's paired t interval of mean(a - b), the reference for the verdicts' rule."""
    from scipy import stats

    return tuple(stats.ttest_rel(a, b).confidence_interval(0.95))


A, B, C = [0.90, 0.92, 0.88], [0.80, 0.81, 0.79], [0.70, 0.71, 0.69]


def test_the_verdict_judges_each_comparison_by_the_paired_differences_interval(tmp_path):
    study = sweep.load_study(write_study(tmp_path, grid={"k": ["a", "b", "c"]}, metrics=["knn"],
                                         verdict={"best": "k=a"}))
    assert _paired_interval(A, B)[0] > 0 and _paired_interval(A, C)[0] > 0
    word, sentence = sweep.verdict(study, _summary(**{"k=a": A, "k=b": B, "k=c": C}))
    assert word == "reproduces"
    low, high = _paired_interval(A, B)
    assert f"k=a 90.00% vs k=b 80.00%, difference +10.00 ± {100 * (high - low) / 2:.2f}% over 3 paired seeds" in sentence
    # Differences 0.10, 0.22, -0.02: mean 0.10, but the interval reaches below zero: open, the means lean as claimed.
    wide = [0.90, 0.96, 0.84]
    b = [0.80, 0.74, 0.86]
    assert _paired_interval(wide, b)[0] < 0 < _paired_interval(wide, b)[1]
    word, sentence = sweep.verdict(study, _summary(**{"k=a": wide, "k=b": b, "k=c": C}))
    assert word == "inconclusive" and "the means lean as claimed" in sentence  # was "partly reproduces"
    word, sentence = sweep.verdict(study, _summary(**{"k=a": B, "k=b": A, "k=c": C}))
    assert word == "does not reproduce" and "k=a is below k=b" in sentence
    study.verdict = {"order": ["k=c", "k=b", "k=a"]}
    assert sweep.verdict(study, _summary(**{"k=a": C, "k=b": B, "k=c": A}))[0] == "reproduces"
    study.verdict = {"better": "k=b", "than": ["k=a"]}
    assert sweep.verdict(study, _summary(**{"k=a": C, "k=b": B, "k=c": [0.1, 0.1, 0.1]}))[0] == "reproduces"


def test_equal_means_and_a_tie_are_inconclusive_not_refuted(tmp_path):
    # vit_patch_projection's spike claims: 0 spikes in every run of both arms was read "does not reproduce".
    study = sweep.load_study(write_study(tmp_path, grid={"k": ["a", "b"]}, metrics=["loss_spikes"],
                                         verdict={"better": "k=a", "than": ["k=b"], "lower": True}))
    word, sentence = sweep.verdict(study, _summary("loss_spikes", **{"k=a": [0, 0, 0], "k=b": [0, 0, 0]}))
    assert word == "inconclusive" and "difference +0 ± 0 over 3 paired seeds" in sentence
    assert "the means are level" in sentence


def test_lower_is_better_judges_the_negated_differences(tmp_path):
    """Fewer spikes: a's 0, 1, 0 against b's 10, 9, 11 (differences -10, -8, -11, all below zero) reproduce;
    the same values swapped are reversed."""
    study = sweep.load_study(write_study(tmp_path, grid={"k": ["a", "b"]}, metrics=["loss_spikes"],
                                         verdict={"better": "k=a", "than": ["k=b"], "lower": True}))
    few, many = [0, 1, 0], [10, 9, 11]
    assert sweep.verdict(study, _summary("loss_spikes", **{"k=a": few, "k=b": many}))[0] == "reproduces"
    word, sentence = sweep.verdict(study, _summary("loss_spikes", **{"k=a": many, "k=b": few}))
    assert word == "does not reproduce" and "k=a is above k=b" in sentence


def test_a_study_partly_reproduces_only_when_one_of_its_claims_does(tmp_path):
    study = sweep.load_study(write_study(tmp_path, grid={"k": ["a", "b", "c"]}, metrics=["knn"], verdict={}))
    study.verdict = [{"claim": "holds", "better": "k=a", "than": ["k=b"]},
                     {"claim": "reversed", "better": "k=b", "than": ["k=a"]}]
    summary = _summary(**{"k=a": A, "k=b": B, "k=c": [0.80, 0.74, 0.86]})
    assert [word for _, word, _ in sweep.verdicts(study, summary)] == ["reproduces", "does not reproduce"]
    assert sweep.verdict(study, summary) == (
        "partly reproduces", "1 of 2 claims reproduce (the 95% interval of each difference beyond zero); each is below.")
    # None reproduces: one open, one reversed -> does not reproduce (collapse's page read "partly, 0 of 4").
    study.verdict = [{"claim": "open", "better": "k=c", "than": ["k=b"]},
                     {"claim": "reversed", "better": "k=b", "than": ["k=a"]}]
    assert [w for _, w, _ in sweep.verdicts(study, summary)] == ["inconclusive", "does not reproduce"]
    assert sweep.verdict(study, summary)[0] == "does not reproduce"
    study.verdict = [{"claim": "open", "better": "k=c", "than": ["k=b"]},
                     {"claim": "open too", "better": "k=b", "than": ["k=c"]}]
    assert sweep.verdict(study, summary)[0] == "inconclusive"


def test_runs_that_failed_or_lack_the_metric_make_the_claim_incomplete(tmp_path):
    # A run that stopped on a NaN writes no results.json; one whose metric is NaN or absent has no score. Judged on
    # the others, a verdict would leave out the very runs that failed.
    study = sweep.load_study(write_study(tmp_path, grid={"k": ["a", "b"]}, metrics=["knn"], seeds=3,
                                         verdict={"better": "k=a", "than": ["k=b"]}))
    runs = sweep.expand(study)
    for run, value in zip(runs, [0.90, 0.92, 0.88, 0.80, 0.81, 0.79]):
        run.folder.mkdir(parents=True)
        (run.folder / "results.json").write_text(json.dumps({"evaluations": {"knn": {"accuracy": value}}}))
    assert sweep.verdict(study, sweep.collect(study))[0] == "reproduces"
    for broken in ('{"evaluations": {"knn": {"accuracy": NaN}}}', '{"evaluations": {}}', None):
        if broken is None:
            (runs[4].folder / "results.json").unlink()
        else:
            (runs[4].folder / "results.json").write_text(broken)
        summary = sweep.collect(study)
        assert summary["points"]["k=b"]["knn"]["n"] == 2 and summary["points"]["k=b"]["knn"]["absent"] == [1]
        word, sentence = sweep.verdict(study, summary)
        assert word == "incomplete" and "k=b (knn) seed 1" in sentence


@pytest.mark.slow
def test_a_sweep_runs_summarises_and_writes_its_page(tmp_path, capsys):
    study_path = write_study(tmp_path)
    assert main(["sweep", str(study_path), "--page", str(tmp_path / "docs" / "toy.md")]) == 0
    printed = capsys.readouterr().out
    study = sweep.load_study(study_path)
    summary = json.loads((study.folder / "summary.json").read_text())
    for point in study.points:
        results = [json.loads((study.folder / point.slug / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
        knn = [r["evaluations"]["knn"]["accuracy"] for r in results]
        assert results[0]["command"] != results[1]["command"]  # two seeds, two runs
        mean = (knn[0] + knn[1]) / 2
        std = abs(knn[0] - knn[1]) / math.sqrt(2)
        got = summary["points"][point.name]["knn"]
        assert got["mean"] == pytest.approx(mean) and got["std"] == pytest.approx(std)
        assert got["ci95"] == pytest.approx(12.706204736174707 * std / math.sqrt(2))  # t(0.975, 1)
        floors = [r["evaluations"]["knn"]["random_init"]["accuracy"] for r in results]
        assert got["floor"] == pytest.approx(sum(floors) / 2)
    page = (tmp_path / "docs" / "toy.md").read_text()
    assert summary["verdict"] in page and "| method_args.temperature=0.2 |" in page
    assert (tmp_path / "docs" / "img" / "toy_knn.png").is_file() and "](img/toy_knn.png)" in page
    listed = (tmp_path / "docs" / "list.md").read_text()
    assert "| [toy](toy.md) | a lower temperature helps |" in listed and f"**{summary['verdict']}**" in listed
    assert f"toy: {summary['verdict']}." in printed
    # A second call finds every run done: nothing runs again.
    mtimes = {p: p.stat().st_mtime_ns for p in study.folder.rglob("results.json")}
    assert main(["sweep", str(study_path)]) == 0
    assert {p: p.stat().st_mtime_ns for p in study.folder.rglob("results.json")} == mtimes


def test_one_run_per_point_is_too_few_to_judge(tmp_path):
    """A single run has no interval: two points a hundredth of a point apart are not judged."""
    study = sweep.load_study(write_study(tmp_path, grid={"k": ["a", "b"]}, metrics=["knn"], verdict={"best": "k=a"}))
    word, sentence = sweep.verdict(study, _summary(**{"k=a": [0.8101], "k=b": [0.8100]}))
    assert word == "inconclusive" and "over 1 seed: too few to judge (at least 3)" in sentence


def _runs_with_floors(tmp_path, scores, floors):
    tmp_path.mkdir()
    study = sweep.load_study(write_study(tmp_path, grid=None, metrics=["knn"], seeds=len(scores),
                                         points=[{"name": "a"}], verdict={"above_floor": "a"}))
    for run, score, floor in zip(sweep.expand(study), scores, floors):
        run.folder.mkdir(parents=True)
        (run.folder / "results.json").write_text(json.dumps(
            {"evaluations": {"knn": {"accuracy": score, "random_init": {"accuracy": floor}}}}))
    return study, sweep.collect(study)


def test_above_floor_compares_each_seed_with_its_own_floor(tmp_path):
    """Scores that follow their own random networks up and down by a steady two points reproduce (the
    paired gains 2.0, 2.1, 1.9: interval 2.0 +- 0.25 by hand), though the scores' and floors' own intervals
    overlap; a gain as large on average but of either sign does not clear zero."""
    study, summary = _runs_with_floors(tmp_path / "steady", [0.72, 0.781, 0.679], [0.70, 0.76, 0.66])
    gain = summary["points"]["a"]["knn"]["gain"]
    assert gain["mean"] == pytest.approx(0.02) and gain["ci95"] == pytest.approx(4.302652729911275 * 0.001 / math.sqrt(3))
    word, sentence = sweep.verdict(study, summary)
    assert word == "reproduces" and "a 72.67% vs a's floor 70.67%, difference +2.00 ± 0.25% over 3 paired" in sentence
    study, summary = _runs_with_floors(tmp_path / "either", [0.74, 0.66, 0.76], [0.70, 0.70, 0.70])
    assert summary["points"]["a"]["knn"]["gain"]["mean"] == pytest.approx(0.02)
    assert sweep.verdict(study, summary)[0] == "inconclusive"


def test_the_fine_tuning_of_each_run_takes_the_runs_seed(tmp_path):
    """Each run fine-tunes on its own label subset against its own scratch network (the floor), so the
    floors vary over seeds as the scores do."""
    study = sweep.load_study(write_study(tmp_path, grid=None, points=[{"name": "a"}], seeds=2, verdict={},
                                         finetune=[0.1], metrics=["finetune_0.1"]))
    for run in sweep.expand(study):
        finetune = sweep.commands(study, run)[-1]
        assert finetune[3:5] == ["evaluate", "finetune"] and finetune[finetune.index("--seeds") + 1] == str(run.seed)


@pytest.mark.slow
def test_a_killed_sweep_keeps_finished_runs_and_resumes_the_cut_one(tmp_path):
    study_path = write_study(tmp_path, grid={"method_args.temperature": [0.5]}, seeds=2, verdict={},
                             overrides=[*TINY, "train.epochs=12", "train.checkpoint_every=3"])
    study = sweep.load_study(study_path)
    first, second = sweep.expand(study)
    command = [sys.executable, "-m", "selfsup", "sweep", str(study_path)]
    running = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (second.folder / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(running.pid, signal.SIGKILL)  # the sweep and the run it was in
    running.wait()
    assert first.status() == "done" and second.status() == "resume"
    kept = (first.folder / "results.json").stat().st_mtime_ns
    assert [c[3] for c in sweep.commands(study, second)] == ["pretrain"] and sweep.commands(study, second)[0][-1] == \
        "--resume"
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 done, 1 to resume, 0 to start" in done.stdout
    assert (first.folder / "results.json").stat().st_mtime_ns == kept
    log = (second.folder / "sweep.log").read_text()
    assert "--resume" in log and "resuming at step" in log and second.status() == "done"
    assert json.loads((study.folder / "summary.json").read_text())["missing"] == []


def test_a_misspelt_key_stops_the_sweep_before_any_run_starts(tmp_path, capsys):
    study_path = write_study(tmp_path, grid={"optim.lrr": [0.1, 0.2]}, seeds=1, verdict={})
    assert main(["sweep", str(study_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "point optim.lrr=0.1" in err and "'lrr'" in err and "lr" in err
    assert not (tmp_path / "sweeps" / "toy").exists() or not any((tmp_path / "sweeps" / "toy").rglob("sweep.log"))


_INTERRUPTED = """
import pathlib, sys
from selfsup.cli import main
from selfsup.sweep import runner
marks = pathlib.Path(sys.argv[2])

def commands(study, run):  # each run: mark that it started, then work for a minute
    return [[sys.executable, "-c", "import pathlib, sys, time; "
             f"pathlib.Path({str(marks)!r}, str(len(list(pathlib.Path({str(marks)!r}).iterdir())))).touch(); "
             "time.sleep(60)"]]

runner.commands = commands
sys.exit(main(["sweep", sys.argv[1]]))
"""


def test_ctrl_c_stops_a_sweep_its_running_run_and_every_queued_one(tmp_path):
    study_path = write_study(tmp_path, seeds=2, verdict={})  # 4 runs, one at a time
    marks = tmp_path / "started"
    marks.mkdir()
    script = tmp_path / "interrupted.py"
    script.write_text(_INTERRUPTED)
    # SIGINT as a terminal leaves it (a pytest-xdist worker ignores it, and an ignored signal stays ignored in its
    # children: Python would then raise no KeyboardInterrupt)
    sweeping = subprocess.Popen([sys.executable, str(script), str(study_path), str(marks)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while not any(marks.iterdir()) and time.time() < deadline:
        time.sleep(0.05)
    started = time.time()
    sweeping.send_signal(signal.SIGINT)  # to the sweep alone: it must stop its child itself
    out, err = sweeping.communicate(timeout=60)
    assert sweeping.returncode == 130 and "selfsup: interrupted" in err and "Traceback" not in err, err[-2000:]
    assert time.time() - started < 30  # the running child was stopped, not waited out
    assert len(list(marks.iterdir())) == 1  # no queued run started after the interrupt


def test_submitit_local_executor_runs_the_same_commands(tmp_path):
    pytest.importorskip("submitit")
    study_path = write_study(tmp_path, grid={"method_args.temperature": [0.5]}, seeds=1, verdict={})
    assert main(["sweep", str(study_path), "--executor", "submitit-local"]) == 0
    study = sweep.load_study(study_path)
    run, = sweep.expand(study)
    assert run.status() == "done" and any((study.folder / "submitit").iterdir())


def test_video_measures_are_read_with_their_floors():
    results = {"evaluations": {"temporal": {"tau": 0.71, "same_video@1": 0.9, "random_init": {"tau": 0.70,
                                                                                              "same_video@1": 0.8}},
                               "propagation": {"j_and_f": 0.65, "pck@0.1": 0.4, "random_init": {"j_and_f": 0.64},
                                               "baselines": {"lab": {"j_and_f": 0.68, "pck@0.1": 0.13},
                                                             "copy": {"j_and_f": 0.2}}}}}
    assert sweep._scores(results, "tau") == (0.71, 0.70)
    assert sweep._scores(results, "same_video") == (0.9, 0.8)
    assert sweep._scores(results, "j_and_f") == (0.65, 0.64)
    assert sweep._scores(results, "pck") == (0.4, None)
    # the baselines do not depend on the network: no floor
    assert sweep._scores(results, "j_and_f_lab") == (0.68, None)
    assert sweep._scores(results, "pck_lab") == (0.13, None)
    assert sweep._scores(results, "j_and_f_copy") == (0.2, None)
    assert sweep._scores({"evaluations": {}}, "tau") == (None, None)


def test_a_fine_tuning_score_is_read_with_its_scratch_run_as_the_floor():
    row = {"mean": 0.8, "std": 0.02, "scratch_mean": 0.7, "scratch_std": 0.01, "seeds": [0]}
    results = {"evaluations": {"finetune": {"fractions": {"0.01": {**row, "mean": 0.6, "scratch_mean": 0.5},
                                                          "0.1": row}}}}
    assert sweep._scores(results, "finetune_0.1") == (0.8, 0.7)
    assert sweep._scores(results, "finetune_0.01") == (0.6, 0.5)
    assert sweep._scores(results, "finetune_0.5") == (None, None)

def test_correspondence_is_read_with_its_floor_and_raw_patches_without():
    results = {"evaluations": {"correspondence": {"pck@1": 0.07, "pck@3": 0.50, "pck@5": 0.83,
                                                  "raw_pixels": {"pck@3": 0.40},
                                                  "random_init": {"pck@1": 0.06, "pck@3": 0.46, "pck@5": 0.80}}}}
    assert sweep._scores(results, "pck3") == (0.50, 0.46)
    assert sweep._scores(results, "pck1") == (0.07, 0.06) and sweep._scores(results, "pck5") == (0.83, 0.80)
    assert sweep._scores(results, "pck3_raw") == (0.40, None)  # raw patches do not depend on the network


def test_points_with_other_floors_are_drawn_each_beside_its_own(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    study = sweep.load_study(write_study(tmp_path, grid={"k": ["a", "b"]}, metrics=["knn"], verdict={}))
    kept = []
    monkeypatch.setattr(plt, "close", kept.append)
    summary = _summary(**{"k=a": (0.9, 0.01), "k=b": (0.8, 0.01)})
    summary["points"]["k=a"]["knn"]["floor"], summary["points"]["k=b"]["knn"]["floor"] = 0.5, 0.7
    sweep.plot(study, summary, tmp_path / "img")
    ax, = kept[-1].axes
    segments = [s for c in ax.collections for s in c.get_segments()] if ax.collections else []
    floors = sorted((float(s[0][1]), float(s[0][0] + s[1][0]) / 2) for s in segments if s[0][1] == s[1][1])
    assert floors == [(pytest.approx(50.0), pytest.approx(0.0)), (pytest.approx(70.0), pytest.approx(1.0))]
    summary["points"]["k=b"]["knn"]["floor"] = 0.5  # one floor: one line across
    sweep.plot(study, summary, tmp_path / "img")
    ax, = kept[-1].axes
    assert [float(y) for line in ax.lines if line.get_linestyle() == "--" for y in line.get_ydata()] == [50.0, 50.0]


def test_the_plot_title_counts_the_seeds_that_finished_not_the_planned(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    study = sweep.load_study(write_study(tmp_path, grid={"k": ["a", "b"]}, metrics=["knn"], seeds=3, verdict={}))
    kept = []
    monkeypatch.setattr(plt, "close", kept.append)
    sweep.plot(study, _summary(**{"k=a": (0.9, 0.91, 0.92), "k=b": (0.8, 0.81)}), tmp_path / "img")  # b's third failed
    assert kept[-1].axes[0].get_title().endswith("over each point's seeds (3, 2)")
    sweep.plot(study, _summary(**{"k=a": (0.9, 0.91), "k=b": (0.8, 0.81)}), tmp_path / "img")
    assert kept[-1].axes[0].get_title().endswith("over 2 seeds")


def test_the_study_list_counts_the_runs_with_results(tmp_path):
    entry = {"mean": 0.75, "std": 0.01, "ci95": 0.02, "n": 2, "values": [0.74, 0.76]}
    done = {"name": "done", "claim": "learns", "verdict": "reproduces", "runs": 3, "points": {"a": {"knn": entry}},
            "verdicts": [], "missing": []}
    short = {**done, "name": "short", "missing": ["runs/sweeps/short/a/seed2"]}
    for summary in (done, short):
        (tmp_path / f"{summary['name']}.json").write_text(json.dumps(summary))
    rows = {line.split("|")[1].strip(): line for line in sweep.study_list(tmp_path).splitlines()[2:]}
    assert rows["[done](done.md)"].endswith("| 3 |") and rows["[short](short.md)"].endswith("| 2 of 3 |")


def test_the_study_list_says_which_floor_verdicts_predate_the_paired_rule(tmp_path):
    # Summaries written before each seed was compared with its own floor have floors but no paired gains.
    entry = {"mean": 0.75, "std": 0.01, "ci95": 0.02, "n": 3, "values": [0.74, 0.75, 0.76], "floor": 0.72}
    old = {"name": "old", "claim": "learns", "verdict": "reproduces", "runs": 3, "points": {"a": {"knn": entry}},
           "verdicts": [{"claim": "learns", "verdict": "reproduces", "text": "(a 75.00% vs a's floor 72.00%)."}]}
    new = {**old, "name": "new", "points": {"a": {"knn": {**entry, "floors": [0.72] * 3,
                                                          "gain": {"mean": 0.03, "ci95": 0.01}}}}}
    unrelated = {**old, "name": "plain", "verdicts": [{"claim": "a beats b", "verdict": "reproduces",
                                                       "text": "(a 75.00% vs b 70.00%)."}]}
    for summary in (old, new, unrelated):
        (tmp_path / f"{summary['name']}.json").write_text(json.dumps(summary))
    rows = {line.split("|")[1].strip(): line for line in sweep.study_list(tmp_path).splitlines()[2:]}
    assert "to be rerun" in rows["[old](old.md)"]
    assert "to be rerun" not in rows["[new](new.md)"] and "to be rerun" not in rows["[plain](plain.md)"]


def test_runs_made_with_other_settings_than_the_study_now_gives_are_refused(tmp_path):
    # A finished run records its command; after the study's overrides change, reusing it would put its
    # numbers under settings it was not made with: the sweep and its summary refuse, naming the run.
    study = sweep.load_study(write_study(tmp_path, grid={"method_args.temperature": [0.5]}, seeds=1, verdict={}))
    (run,) = sweep.expand(study)
    run.folder.mkdir(parents=True)

    def finished(overrides):
        command = " ".join(["selfsup", "pretrain", study.recipe, *overrides])
        (run.folder / "results.json").write_text(json.dumps(
            {"command": command, "evaluations": {"knn": {"accuracy": 0.7, "random_init": {"accuracy": 0.6}}}}))

    finished(run.overrides)
    assert run.made_otherwise(study.recipe) is None
    sweep.summarise(study)  # as made: read
    finished([w.replace("train.epochs=1", "train.epochs=3") for w in run.overrides])
    assert "made with train.epochs=3; now train.epochs=1" in run.made_otherwise(study.recipe)
    for call in (lambda: sweep.summarise(study), lambda: sweep.execute(study)):
        with pytest.raises(ConfigError, match=r"1 finished run\(s\) were made with other settings .*seed0"):
            call()
    finished([*run.overrides[1:], run.overrides[0]])  # the same overrides in another order: the same run
    assert run.made_otherwise(study.recipe) is None
    # A later evaluation's file cut short is named, not a traceback.
    (run.folder / "evaluations").mkdir()
    (run.folder / "evaluations" / "knn.json").write_text('{"accuracy": 0.')
    with pytest.raises(DataError, match=r"evaluations/knn.json is not valid JSON"):
        sweep.summarise(study)


@pytest.mark.parametrize("changes,words", [({"finetune": 0.01}, "finetune must be a list of label shares"),
                                           ({"finetune": ["abc"]}, "finetune must be a list of label shares"),
                                           ({"finetune": [1.5]}, "finetune must be a list of label shares"),
                                           ({"recipe": 5}, "recipe must be a path"),
                                           ({"metrics": "knn"}, "metrics must be a list of names")])
def test_a_study_file_with_values_of_the_wrong_kind_is_one_line(tmp_path, changes, words):
    with pytest.raises(ConfigError, match=words):
        sweep.load_study(write_study(tmp_path, **changes))
