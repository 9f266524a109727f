"""selfsup.evaluate.report and `selfsup report`: a self-contained, escaped, valid page that a headless
browser renders with every picture; the README table from the runs' files; one-line CLI errors."""

import base64
import html
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from selfsup.cli import main
from selfsup.errors import DataError
from selfsup.evaluate import headline_table, load_run, results_table, write_report

ROOT = Path(__file__).resolve().parent.parent
NAME = "simclr <script>alert('x')</script> & co"
RESULTS = {
    "name": NAME, "method": "simclr", "data": "fashion_mnist", "backbone": "convnet",
    "epochs": 10.0, "batch_size": 256, "steps": 2340, "precision": "32-true", "device": "cpu",
    "cpu_capability": "AVX2", "command": "selfsup pretrain recipes/simclr_fashion_mnist.yaml",
    "commit": "0a3e916", "wall_time_s": 1003.2, "pretrain_time_s": 880.1, "images_per_s": 12345.6,
    "linear_accuracy": 0.8712, "knn_accuracy": 0.8301, "seed_note": "an unknown key",
    "evaluations": {
        "linear": {"accuracy": 0.8712, "data": "fashion_mnist", "protocol": "logistic regression <frozen>"},
        "knn": {"accuracy": 0.8301, "k": 200, "temperature": 0.1, "data": "fashion_mnist",
                "protocol": "weighted kNN vote"},
        "finetune": {"data": "fashion_mnist", "protocol": "stale: replaced by evaluations/finetune.json",
                     "fractions": {"0.01": {"mean": 0.1111, "std": 0.0}}},
        "transfer_digits": {"data": "digits", "linear": 0.93, "knn": 0.91, "protocol": "probe on digits"},
        "fewshot_5way_1shot": {"accuracy": 0.61, "ci95": 0.008, "episodes": 600, "n_way": 5, "k_shot": 1,
                               "protocol": "prototypes, 1 shot"},
        "fewshot_5way_5shot": {"accuracy": 0.7834, "ci95": 0.0061, "episodes": 600, "n_way": 5, "k_shot": 5,
                               "protocol": "prototypes, 5 shots"},
        "retrieval": {"recall@1": 0.8, "recall@5": 0.95, "protocol": "cosine nearest neighbours"},
    },
}
FINETUNE = {"data": "fashion_mnist", "protocol": "fine-tune the whole network",
            "fractions": {"0.1": {"mean": 0.8, "std": 0.005, "scratch_mean": 0.7, "scratch_std": 0.01, "seeds": [0, 1, 2]},
                          "0.01": {"mean": 0.7123, "std": 0.0104, "scratch_mean": 0.6201, "scratch_std": 0.0199,
                                   "seeds": [0, 1, 2]}}}
CONFIG = "name: simclr_fashion_mnist\nmethod: simclr\ntrain:\n  epochs: 10\n  note: <b>not bold</b>\n"
METRICS = "step,loss,lr,epoch,knn_accuracy\n10,5.125,0.1,0.1,\n20,4.25,0.2,0.2,0.5\n30,3.375,0.3,0.3,\n"


def picture(path: Path, colour: str) -> bytes:
    image = Image.new("RGB", (120, 80), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([10, 10, 110, 70], fill=colour)
    draw.line([0, 0, 120, 80], fill="black", width=3)
    image.save(path)
    return path.read_bytes()


def make_run(folder: Path, results=RESULTS, *, finetune=FINETUNE, config=CONFIG, metrics=METRICS,
             pictures=("curves.png", "views.png", "tsne.png")) -> Path:
    (folder / "logs").mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    if finetune is not None:
        (folder / "evaluations").mkdir()
        (folder / "evaluations" / "finetune.json").write_text(json.dumps(finetune))
    if config is not None:
        (folder / "config.yaml").write_text(config)
    if metrics is not None:
        (folder / "logs" / "metrics.csv").write_text(metrics)
    for name, colour in zip(pictures, ("tomato", "steelblue", "seagreen", "gold")):
        picture(folder / name, colour)
    return folder


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "run")


def test_load_run_merges_evaluation_files_and_reads_config_and_metrics(run):
    loaded = load_run(run)
    assert loaded["results"]["evaluations"]["finetune"] == FINETUNE  # the file replaces results.json's entry
    assert loaded["results"]["evaluations"]["knn"] == RESULTS["evaluations"]["knn"]
    assert loaded["config"] == CONFIG
    assert loaded["metrics"][1] == {"step": 20.0, "loss": 4.25, "lr": 0.2, "epoch": 0.2, "knn_accuracy": 0.5}
    assert loaded["metrics"][0]["knn_accuracy"] is None


def test_page_is_self_contained_escaped_and_shows_every_value(run):
    path = write_report(run)
    assert path == run / "report.html"
    page = path.read_text(encoding="utf-8")

    assert "http://" not in page and "https://" not in page and "<link" not in page
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert len(sources) == len(re.findall(r"<img\b", page)) == 3
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    inlined = {base64.b64decode(source.split(",", 1)[1]) for source in sources}
    assert inlined == {(run / name).read_bytes() for name in ("curves.png", "views.png", "tsne.png")}

    assert html.escape(NAME) in page and "<script>alert" not in page
    assert page.count("<script>") == 1  # the page's own broken-image counter, nothing from the files
    assert html.escape(CONFIG) in page and "<b>not bold" not in page
    assert "This run has no retrieval.png." in page

    expected = [
        "simclr", "fashion_mnist", "convnet", ">10<", ">256<", ">2340<", "32-true", "cpu (CPU AVX2)",
        f"{1003.2 / 60:.1f} min", f"{880.1 / 60:.1f} min", "12,346", RESULTS["command"], "0a3e916",
        "an unknown key",
        "87.12%", "83.01%", "k=200, temperature=0.1",
        "71.23% ± 1.04% (scratch 62.01% ± 1.99%)", "80.00% ± 0.50% (scratch 70.00% ± 1.00%)", "seeds=[0, 1, 2]",
        "1% of the labels", "10% of the labels",
        "linear 93.00%, kNN 91.00%", "digits",
        "61.00% ± 0.80% (95% CI)", "78.34% ± 0.61% (95% CI)", "episodes=600, n_way=5, k_shot=1",
        "recall@1 80.00%, recall@5 95.00%",
        ">3.375<", ">30<", ">0.5<", ">20<",  # last logged loss and kNN accuracy, and their steps
    ]
    expected += [html.escape(entry["protocol"]) for key, entry in RESULTS["evaluations"].items() if key != "finetune"]
    expected.append(FINETUNE["protocol"])
    for text in expected:
        assert text in page, text
    assert "11.11%" not in page and "stale" not in page


class TagBalance(HTMLParser):
    """Fails on an end tag that does not close the innermost open element, or an element left open."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.open, self.doctype, self.problems = [], None, []

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.open[-1:]} at {self.getpos()}")
        else:
            self.open.pop()


def test_page_is_valid_html5(run):
    page = write_report(run).read_text(encoding="utf-8")
    checker = TagBalance()
    checker.feed(page)
    checker.close()
    assert checker.doctype == "DOCTYPE html" and not checker.problems and not checker.open
    assert re.search(r'<html lang="en">\s*<head>\s*<meta charset="utf-8">', page)
    assert f"<title>{html.escape(NAME)} — selfsup report</title>" in page
    import html5lib  # in the test extra: a missing parser fails the test rather than passing it unchecked

    parser = html5lib.HTMLParser(strict=True)
    parser.parse(page)
    assert not parser.errors


def test_old_run_is_filled_from_config_and_says_what_is_missing(tmp_path):
    run = make_run(tmp_path / "old", {"linear_accuracy": 0.5}, finetune=None, metrics=None, pictures=(),
                   config="method: byol\ndata:\n  name: cifar10\ntrain:\n  epochs: 2.5\n")
    page = write_report(run, tmp_path / "elsewhere.html").read_text(encoding="utf-8")
    assert not (run / "report.html").exists()
    for text in ("<h1>old</h1>", "byol", "cifar10", ">2.5<", "50.00%", "not recorded",
                 "This run has no curves.png.", "This run has no umap.png or tsne.png.",
                 "This run has no logs/metrics.csv."):
        assert text in page, text
    assert "<th>commit</th><td class=\"code\">–</td>" in page

    bare = make_run(tmp_path / "bare", {}, finetune=None, config=None, metrics=None, pictures=())
    page = write_report(bare).read_text(encoding="utf-8")
    assert "This run has no config.yaml." in page and "This run has no evaluations." in page


def test_errors_name_the_folder_or_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty is not a selfsup run folder: it has no results.json"):
        load_run(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "nowhere")
    run = make_run(tmp_path / "run")
    (run / "evaluations" / "knn.json").write_text('{"accuracy": 0.8,')
    with pytest.raises(DataError, match=r"evaluations/knn.json is not valid JSON"):
        load_run(run)
    (run / "evaluations" / "knn.json").write_text('{"accuracy": "high"}')
    with pytest.raises(DataError, match=r"evaluation 'knn': 'accuracy' must be a number, got 'high'"):
        write_report(run)
    (run / "evaluations" / "knn.json").unlink()
    (run / "views.png").write_bytes(b"GIF89a not a png at all")
    with pytest.raises(DataError, match=r"views.png is not a PNG image"):
        write_report(run)
    (run / "views.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")  # cut inside its size
    with pytest.raises(DataError, match=r"views.png is not a PNG image"):
        write_report(run)
    (run / "views.png").unlink()
    (run / "config.yaml").write_bytes(b"name: \xff\xfe broken\n")
    with pytest.raises(DataError, match=r"config.yaml is not UTF-8 text"):
        load_run(run)
    (run / "config.yaml").write_text("name: fine\n")
    (run / "logs" / "metrics.csv").write_bytes(b"step,loss\n1,\xff\n")
    with pytest.raises(DataError, match=r"metrics.csv is not UTF-8 text"):
        load_run(run)
    (run / "logs" / "metrics.csv").unlink()
    (run / "evaluations" / "deep.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(DataError, match=r"deep.json is not valid JSON"):
        load_run(run)


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium: the one on PATH, else Debian's, installed when running as root with apt-get."""
    browser = find_chromium()
    if browser is not None:
        return browser
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no chromium, chromium-browser or google-chrome on PATH, and no root apt-get to install "
                    "Debian's chromium (scripts/test.sh installs it in CI)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]):
        out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            pytest.skip(f"installing Debian's chromium failed: {' '.join(command)}: {out.stderr.strip()[-500:]}")
    return find_chromium() or pytest.skip("apt-get installed chromium but it is not on PATH")


def render(browser: str, page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    # A profile and HOME of its own, so the browser writes nothing outside tmp_path and never
    # meets another instance's profile lock.
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={home / 'profile'}",
                          "--window-size=1000,1600", *args, page.as_uri()],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(home)})
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_headless_browser_renders_every_picture(chromium, run, tmp_path):
    page = write_report(run)
    dom = render(chromium, page, tmp_path, "--dump-dom").stdout
    assert '<body data-broken-images="0">' in dom
    # The name is text in the heading, and the only script is the page's own.
    assert f"<h1>{html.escape(NAME, quote=False)}</h1>" in dom and dom.count("<script") == 1

    screenshot = tmp_path / "page.png"
    render(chromium, page, tmp_path, f"--screenshot={screenshot}")
    with Image.open(screenshot) as image:
        assert image.size == (1000, 1600)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 50  # text, table rules and the three pictures, not a blank page
    assert max(count for count, _ in colours) < 0.95 * 1000 * 1600


def test_headless_browser_counts_a_broken_picture(chromium, run, tmp_path):
    # A PNG cut short after its size header passes the report's check but does not decode.
    whole = (run / "views.png").read_bytes()
    (run / "views.png").write_bytes(whole[:40])
    dom = render(chromium, write_report(run), tmp_path, "--dump-dom").stdout
    assert '<body data-broken-images="1">' in dom


def table_rows(markdown: str) -> list[list[str]]:
    lines = markdown.strip().splitlines()
    return [re.split(r"(?<!\\) \| ", line[2:-2]) for line in lines]


def test_results_table_has_a_row_per_run_with_the_files_numbers(tmp_path):
    full = make_run(tmp_path / "full")
    old_results = {"linear_accuracy": 0.5, "wall_time_s": 61.0, "images_per_s": 999.4,
                   "command": "selfsup pretrain byol.yaml | tee log"}
    old = make_run(tmp_path / "old", old_results, finetune=None, metrics=None, pictures=(),
                   config="name: byol_old\nmethod: byol\ntrain:\n  epochs: 2\n  batch_size: 128\n")
    markdown = results_table([full, old])
    assert markdown.endswith("\n")
    head, align, *rows = table_rows(markdown)
    assert head == ["run", "method", "epochs", "batch", "linear probe (random init)", "kNN (random init)",
                    "wall time (min)", "img/s", "command", "fine-tune 1% (scratch)", "fine-tune 10% (scratch)",
                    "few-shot 5-way 1-shot (random init)", "few-shot 5-way 5-shot (random init)", "transfer"]
    assert len(align) == len(head) and len(rows) == 2

    def percent(x):
        return f"{x * 100:.2f}%"

    def spread(mean, error):
        return f"{percent(mean)} ± {percent(error)}"

    tuned = {key: f"{spread(f['mean'], f['std'])} (scratch {spread(f['scratch_mean'], f['scratch_std'])})"
             for key, f in FINETUNE["fractions"].items()}
    shots = RESULTS["evaluations"]
    assert rows[0] == [
        html.escape(NAME, quote=False), "simclr", "10", "256", percent(0.8712), percent(0.8301), f"{1003.2 / 60:.1f}", "12,346",
        f"`{RESULTS['command']}`", tuned["0.01"], tuned["0.1"],
        spread(shots["fewshot_5way_1shot"]["accuracy"], shots["fewshot_5way_1shot"]["ci95"]),
        spread(shots["fewshot_5way_5shot"]["accuracy"], shots["fewshot_5way_5shot"]["ci95"]),
        f"digits: linear {percent(0.93)}, kNN {percent(0.91)}"]
    assert rows[1] == ["byol_old", "byol", "2", "128", percent(0.5), "–", f"{61.0 / 60:.1f}", "999",
                       "`selfsup pretrain byol.yaml \\| tee log`"] + ["–"] * 5

    only_old = table_rows(results_table([old]))
    assert len(only_old[0]) == 9 and "transfer" not in only_old[0] and len(only_old) == 3


def test_tables_show_what_a_sent_results_json_holds_and_run_none_of_it(tmp_path):
    """Rendered by Python-Markdown (MkDocs' engine): no element, handler or link a run's strings did not
    have as text, and each string shown as it was written."""
    markdown = pytest.importorskip("markdown")
    hostile = {**RESULTS, "name": "<script>alert(1)</script>", "method": "<img src=x onerror=alert(2)>",
               "epochs": "[click](javascript:alert(3))", "data": "*_bold_* `code`",
               "command": "selfsup pretrain a.yaml ``x`` <iframe src=//evil>"}
    folder = make_run(tmp_path / "hostile", hostile, finetune=None)
    for table in (results_table([folder]), headline_table([folder])):
        rendered = markdown.markdown(table, extensions=["tables"])
        assert "<script" not in rendered and "<img" not in rendered and "<iframe" not in rendered
        assert "href=" not in rendered and "<em>" not in rendered and "<strong>" not in rendered
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered and "[click](javascript:alert(3))" in rendered
    rendered = markdown.markdown(results_table([folder]), extensions=["tables"])
    assert "<code>selfsup pretrain a.yaml ``x`` &lt;iframe src=//evil&gt;</code>" in rendered  # the whole command
    assert "&lt;img src=x onerror=alert(2)&gt;" in rendered
    assert "*_bold_* `code`" in markdown.markdown(headline_table([folder]), extensions=["tables"])


def test_results_table_shows_the_bank_knn_of_a_memory_bank_run(tmp_path):
    bank_results = {**RESULTS, "evaluations": {**RESULTS["evaluations"],
                                               "bank_knn": {"accuracy": 0.7712, "k": 200, "temperature": 0.07}}}
    bank = make_run(tmp_path / "bank", bank_results, finetune=None)
    plain = make_run(tmp_path / "plain", finetune=None)
    head, _, with_bank, without = table_rows(results_table([bank, plain]))
    column = head.index("bank kNN")
    assert head[column - 1] == "kNN (random init)" and with_bank[column] == "77.12%" and without[column] == "–"
    assert "bank kNN" not in table_rows(results_table([plain]))[0]


def test_results_table_shows_a_dense_runs_pck_beside_its_random_network_and_raw_patches(tmp_path):
    entry = {"pck@1": 0.38, "pck@3": 0.7183, "pck@5": 0.79, "points": 100,
             "random_init": {"pck@1": 0.25, "pck@3": 0.4891, "pck@5": 0.61},
             "raw_pixels": {"pck@1": 0.45, "pck@3": 0.7008, "pck@5": 0.77}}
    dense = make_run(tmp_path / "dense", {**RESULTS, "evaluations": {**RESULTS["evaluations"], "correspondence": entry}},
                     finetune=None)
    plain = make_run(tmp_path / "plain", finetune=None)
    head, _, with_pck, without = table_rows(results_table([dense, plain]))
    column = head.index("PCK@3 (random init; raw patches)")
    assert with_pck[column] == "71.83% (48.91%; raw 70.08%)" and without[column] == "–"
    assert not any("PCK" in name for name in table_rows(results_table([plain]))[0])


def test_every_recorded_floor_stands_beside_its_number_in_the_table_and_the_page(tmp_path):
    evaluations = json.loads(json.dumps(RESULTS["evaluations"]))
    evaluations["linear"]["random_init"] = {"accuracy": 0.8201}
    evaluations["fewshot_5way_1shot"]["random_init"] = {"accuracy": 0.5507, "ci95": 0.0091}
    evaluations["retrieval"]["random_init"] = {"recall@1": 0.7, "recall@5": 0.9}
    folder = make_run(tmp_path / "floors", {**RESULTS, "evaluations": evaluations}, finetune=None)
    head, _, row = table_rows(results_table([folder]))
    assert row[head.index("linear probe (random init)")] == "87.12% (82.01%)"
    assert row[head.index("kNN (random init)")] == "83.01%"  # none recorded: nothing invented
    assert row[head.index("few-shot 5-way 1-shot (random init)")] == "61.00% ± 0.80% (55.07%)"
    page = html.unescape(write_report(folder).read_text(encoding="utf-8"))
    assert "87.12% (random init: 82.01%)" in page
    assert "61.00% ± 0.80% (random init: 55.07% ± 0.91%)" in page
    assert "recall@1 80.00%, recall@5 95.00% (random init: recall@1 70.00%, recall@5 90.00%)" in page
    assert "random_init=" not in page  # a floor is a score, not a setting


def test_python_m_selfsup_report_writes_the_page(run):
    out = subprocess.run([sys.executable, "-m", "selfsup", "report", str(run)], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(run / "report.html") and (run / "report.html").is_file()


# In-process from here on: each `python -m selfsup` start imports torch and Lightning again (seconds).
def test_cli_prints_or_writes_the_table(run, tmp_path, capsys):
    assert main(["report", "--table", str(run), str(run)]) == 0
    assert capsys.readouterr().out == results_table([run, run])

    table = tmp_path / "table.md"
    assert main(["report", "--table", str(run), "--out", str(table)]) == 0
    assert capsys.readouterr().out.strip() == str(table) and table.read_text(encoding="utf-8") == results_table([run])

    # `report --table runs/*` where runs/ also holds a sweep's folder and an unfinished run: those are left out.
    sweeps, unfinished = tmp_path / "sweeps", tmp_path / "training"
    sweeps.mkdir()
    (unfinished / "checkpoints").mkdir(parents=True)
    assert main(["report", "--table", str(run), str(sweeps), str(unfinished)]) == 0
    out, err = capsys.readouterr()
    assert out == results_table([run]) and str(sweeps) in err and str(unfinished) in err
    assert main(["report", "--table", str(sweeps), str(unfinished)]) == 2


def test_cli_says_in_one_line_that_a_folder_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    line, = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("selfsup: error:") and str(tmp_path) in line and "no results.json" in line


def test_results_table_shows_a_video_runs_propagation_beside_its_baselines_and_its_tau(tmp_path):
    import json

    propagation = {"j_and_f": 0.5813, "j": 0.57, "f": 0.59, "random_init": {"j_and_f": 0.4638, "j": 0.45, "f": 0.47}}
    temporal = {"tau": 0.7818, "same_video@1": 1.0, "random_init": {"tau": 0.6838, "same_video@1": 1.0}}
    run = make_run(tmp_path / "video", {**RESULTS, "evaluations": {**RESULTS["evaluations"], "propagation": propagation,
                                                                    "temporal": temporal}}, finetune=None)
    # selfsup evaluate propagate's entry (with the baselines) replaces the run's own
    (run / "evaluations").mkdir(exist_ok=True)
    (run / "evaluations" / "propagation.json").write_text(json.dumps(
        {**propagation, "baselines": {"copy": {"j_and_f": 0.2028}, "lab": {"j_and_f": 0.6834}}}))
    plain = make_run(tmp_path / "plain", finetune=None)
    head, _, video, without = table_rows(results_table([run, plain]))
    column = head.index("propagation J&F (random init; Lab; copy)")
    assert video[column] == "0.581 (0.464; Lab 0.683; copy 0.203)" and without[column] == "–"
    assert video[head.index("temporal-order tau (random init)")] == "0.782 (0.684)"
    assert not any("J&F" in name for name in table_rows(results_table([plain]))[0])
    # The run's page too: each score beside its floor and the baselines, none of them read as a setting.
    page = html.unescape(write_report(run).read_text(encoding="utf-8"))
    assert ("J&F 0.5813, J 0.57, F 0.59 (random init: J&F 0.4638, J 0.45, F 0.47) (copy baseline: J&F 0.2028) "
            "(lab baseline: J&F 0.6834)") in page
    assert "tau 0.7818, same_video@1 100.00% (random init: tau 0.6838, same_video@1 100.00%)" in page
    assert "j_and_f=" not in page and "tau=" not in page and "baselines=" not in page


def test_headline_table_gives_each_runs_gain_over_its_floor_and_its_own_measure(tmp_path):
    from selfsup.evaluate import headline_table

    floors = {"linear": {"accuracy": 0.8415, "random_init": {"accuracy": 0.8201}},
              "knn": {"accuracy": 0.7526, "random_init": {"accuracy": 0.7295}}}
    plain = make_run(tmp_path / "plain", {**RESULTS, "evaluations": floors}, finetune=None)
    video = make_run(tmp_path / "video", {**RESULTS, "name": "vc", "data": "video", "evaluations": {
        **floors, "propagation": {"j_and_f": 0.5782, "random_init": {"j_and_f": 0.4638}}}}, finetune=None)
    unfloored = make_run(tmp_path / "old", {**RESULTS, "name": "old"}, finetune=None)
    temporal = {"tau": 0.7049, "alignment_tau": 0.7338, "same_video@1": 1.0,
                "random_init": {"tau": 0.6908, "alignment_tau": 0.6830}}
    views = make_run(tmp_path / "views", {**RESULTS, "name": "mv", "data": "video", "evaluations": {
        **floors, "propagation": {"j_and_f": 0.6973, "random_init": {"j_and_f": 0.6520}}, "temporal": temporal}},
        finetune=None)
    timed = make_run(tmp_path / "timed", {**RESULTS, "name": "r3m", "data": "video", "evaluations": {
        **floors, "temporal": {"tau": 0.7667, "random_init": {"tau": 0.7240}}}}, finetune=None)
    head, _, first, second, third, fourth, fifth = table_rows(headline_table([plain, video, unfloored, views, timed]))
    gain, own = head.index("gain linear / kNN"), head.index("own measure")
    assert first[gain] == "+2.14 / +2.31" and first[own] == "–"
    assert first[head.index("linear (random init)")] == "84.15% (82.01%)"
    assert second[own] == "J&F 0.578 (0.464)" and second[head.index("data")] == "video"
    assert third[gain] == "– / –"  # no floor recorded: no gain claimed
    assert fourth[own] == "J&F 0.697 (0.652); tau 0.705 (0.691); alignment tau 0.734 (0.683)"
    assert fifth[own] == "tau 0.767 (0.724)"
