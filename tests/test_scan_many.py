"""`scan-many`: a folder or manifest of tiny models scanned in one batch, bad models reported and
skipped, the summary files, resume, worker processes and Ray giving the same results."""
from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_bad_input, invoke
from neuralcleanse.cli import EXIT_BAD_INPUT, EXIT_CLEAN, EXIT_INFECTED
from neuralcleanse.cli.scan_many import exit_code
from neuralcleanse.detection import NeuralCleanse
from neuralcleanse.models import save_checkpoint
from neuralcleanse.zoo import journal
from neuralcleanse.zoo.manifest import _unique_names
from neuralcleanse.zoo.summary import suspicious_first

pytestmark = pytest.mark.slow  # the quick subset (make test-quick) leaves this module out

# Small budgets (verdicts on these tiny models are not the point here) and a fixed block size, so
# that two runs of one model agree bit for bit whatever runs them.
FAST = ("--max-steps", "20", "--samples", "60", "--block-size", "3")
SAME = ("model", "name", "verdict", "flagged", "anomaly_index", "min_label", "num_classes", "error", "report")
HOSTILE = "<script>alert(1)</script>.pt"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, infected, clean_model, data) -> Path:
    """zoo/{inf,clean,notes}.pt (notes.pt is text) and data.npz beside the folder."""
    root = tmp_path_factory.mktemp("zoo")
    (root / "zoo").mkdir()
    save_checkpoint(infected[0], root / "zoo" / "inf.pt")
    save_checkpoint(clean_model, root / "zoo" / "clean.pt")
    (root / "zoo" / "notes.pt").write_text("these are my notes, not a model\n")
    np.savez(root / "data.npz", x_train=data.train.x.numpy(), y_train=data.train.y.numpy(),
             x_test=data.test.x.numpy(), y_test=data.test.y.numpy())
    return root


@pytest.fixture(scope="module")
def folder_run(zoo: Path):
    out = zoo / "out-folder"
    result = invoke("scan-many", str(zoo / "zoo"), "--data", str(zoo / "data.npz"), "--out", str(out), *FAST)
    return result, out


def summary(out: Path) -> list[dict]:
    return json.loads((out / "summary.json").read_text())["models"]


def same_fields(rows: list[dict]) -> list[dict]:
    return [{k: row[k] for k in SAME} for row in rows]


def write_manifest(path: Path, rows: list[dict], columns: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


# ---- a folder of models ------------------------------------------------------------------------


def test_folder_scans_every_model_and_reports_the_bad_one(folder_run, zoo: Path) -> None:
    result, out = folder_run
    rows = summary(out)
    by_name = {row["name"]: row for row in rows}
    assert [row["model"] for row in rows] == [str(zoo / "zoo" / f) for f in ("clean.pt", "inf.pt", "notes.pt")]
    assert by_name["notes"]["verdict"] == "error"
    assert "notes.pt" in by_name["notes"]["error"] and "\n" not in by_name["notes"]["error"]
    assert by_name["notes"]["report"] is None
    assert by_name["inf"]["verdict"] == "infected" and by_name["inf"]["error"] is None
    assert by_name["clean"]["verdict"] in ("clean", "infected") and by_name["clean"]["num_classes"] == 6
    assert result.exit_code == EXIT_INFECTED == exit_code(rows), result.output
    assert "3 models:" in result.stdout and str(out / "index.html") in result.stdout
    assert len(journal.read(out / journal.JOURNAL_NAME)) == 3
    for row in rows[:2]:
        assert (out / row["report"]).is_file() and row["report"] == f"models/{row['name']}/report.html"


def test_folder_rows_match_single_scans(folder_run, zoo: Path, tmp_path: Path) -> None:
    """Each model gets what `neuralcleanse scan` gives it with the same options."""
    _, out = folder_run
    by_name = {row["name"]: row for row in summary(out)}
    for name in ("inf", "clean"):
        single = tmp_path / name
        result = invoke("scan", str(zoo / "zoo" / f"{name}.pt"), "--data", str(zoo / "data.npz"), "--out",
                        str(single), *FAST)
        report = json.loads((single / "report.json").read_text())
        row = by_name[name]
        assert (row["verdict"], row["flagged"], row["anomaly_index"]) == \
            (report["verdict"], report["flagged"], report["anomaly_index"])
        assert result.exit_code == (EXIT_INFECTED if report["infected"] else EXIT_CLEAN)
        batch_report = json.loads((out / "models" / name / "report.json").read_text())
        assert batch_report["l1_norms"] == report["l1_norms"]
        assert batch_report["model"]["path"] == str(zoo / "zoo" / f"{name}.pt")


def test_summary_files_agree_and_index_is_suspicious_first(folder_run) -> None:
    _, out = folder_run
    rows = summary(out)
    with open(out / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == [r["model"] for r in rows]
    for line, row in zip(table, rows):
        assert line["verdict"] == row["verdict"]
        assert line["flagged"] == ",".join(map(str, row["flagged"]))
        assert (line["anomaly_index"] == "") == (row["anomaly_index"] is None)
        if row["anomaly_index"] is not None:
            assert float(line["anomaly_index"]) == pytest.approx(row["anomaly_index"])
        assert line["error"] == (row["error"] or "")
    html = (out / "index.html").read_text()
    shown = re.findall(r'<tr class="[^"]*" data-verdict="([^"]+)"><td class="v">[^<]*</td><td class="model">'
                       r"([^<]*)", html)
    assert shown == [(r["verdict"], r["model"]) for r in suspicious_first(rows)]
    assert shown[0][0] == "infected" and shown[-1][0] in ("clean", "error")
    for row in rows:
        if row["report"]:
            assert f'href="{row["report"]}"' in html


def test_suspicious_first_order_and_exit_codes() -> None:
    rows = [{"model": "c1", "verdict": "clean", "anomaly_index": 0.5},
            {"model": "e", "verdict": "error", "anomaly_index": None},
            {"model": "i1", "verdict": "infected", "anomaly_index": 3.0},
            {"model": "c2", "verdict": "clean", "anomaly_index": 1.5},
            {"model": "n", "verdict": "inconclusive", "anomaly_index": 0.1},
            {"model": "i2", "verdict": "infected", "anomaly_index": None},  # infinite: all other norms equal
            {"model": "i3", "verdict": "infected", "anomaly_index": 7.0}]
    assert [r["model"] for r in suspicious_first(rows)] == ["i2", "i3", "i1", "n", "e", "c2", "c1"]
    v = lambda *verdicts: [{"verdict": x} for x in verdicts]  # noqa: E731
    assert exit_code(v("clean", "inconclusive")) == EXIT_CLEAN
    assert exit_code(v("inconclusive")) == EXIT_CLEAN
    assert exit_code(v("clean", "error", "inconclusive")) == EXIT_BAD_INPUT
    assert exit_code(v("error", "infected", "clean")) == EXIT_INFECTED


def test_workers_2_gives_what_workers_1_gives(folder_run, zoo: Path) -> None:
    _, out1 = folder_run
    out2 = zoo / "out-w2"
    result = invoke("scan-many", str(zoo / "zoo"), "--data", str(zoo / "data.npz"), "--out", str(out2),
                    "--workers", "2", *FAST)
    assert result.exit_code == EXIT_INFECTED, result.output
    assert same_fields(summary(out2)) == same_fields(summary(out1))
    for name in ("inf", "clean"):
        norms = [json.loads((o / "models" / name / "report.json").read_text())["l1_norms"] for o in (out1, out2)]
        assert norms[0] == norms[1]


@pytest.mark.slow
def test_ray_gives_what_the_local_run_gives(folder_run, zoo: Path, monkeypatch) -> None:
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning about GPUs
    _, local = folder_run
    out = zoo / "out-ray"
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        result = invoke("scan-many", str(zoo / "zoo"), "--data", str(zoo / "data.npz"), "--out", str(out),
                        "--ray", "auto", *FAST)
    finally:
        ray.shutdown()
    assert result.exit_code == EXIT_INFECTED, result.output
    assert same_fields(summary(out)) == same_fields(summary(local))


def test_ray_not_installed_says_how_to_install(zoo: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    out = zoo / "out-noray"
    assert_bad_input(invoke("scan-many", str(zoo / "zoo"), "--data", str(zoo / "data.npz"), "--out", str(out),
                            "--ray", "auto"), "pip install 'ray>=2.52,<3'")
    assert not (out / journal.JOURNAL_NAME).exists()


def test_a_crash_in_one_model_is_reported_as_such(zoo: Path, tmp_path: Path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr("neuralcleanse.pipeline.run_scan", boom)
    manifest = write_manifest(tmp_path / "m.csv", [{"model": str(zoo / "zoo" / "inf.pt")}], ["model"])
    result = invoke("scan-many", str(manifest), "--data", str(zoo / "data.npz"), "--out", str(tmp_path / "o"))
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    (row,) = summary(tmp_path / "o")
    assert row["verdict"] == "error" and row["error"] == "crash: RuntimeError: boom"


# ---- manifests -----------------------------------------------------------------------------------


def test_csv_manifest_overrides_per_row_and_escapes_hostile_paths(zoo: Path) -> None:
    # Paths in the manifest are read from its own folder, data paths too.
    manifest = write_manifest(zoo / "lists" / "zoo.csv", [
        {"model": "../zoo/inf.pt", "data": "../data.npz"},
        {"model": "../zoo/clean.pt", "data": "../data.npz", "threshold": "50", "labels": "0,1,2,3",
         "max-steps": "8"},
        {"model": HOSTILE, "data": "../data.npz"},
    ], ["model", "data", "threshold", "labels", "max-steps"])
    out = zoo / "out-csv"
    result = invoke("scan-many", str(manifest), "--out", str(out), *FAST)
    rows = summary(out)
    assert result.exit_code == EXIT_INFECTED, result.output
    assert [r["verdict"] for r in rows] == ["infected", "clean", "error"]
    clean = json.loads((out / "models" / "clean" / "report.json").read_text())
    assert clean["labels"] == [0, 1, 2, 3] and clean["settings"]["config"]["max_steps"] == 8
    inf = json.loads((out / "models" / "inf" / "report.json").read_text())
    assert inf["labels"] == list(range(6)) and inf["settings"]["config"]["max_steps"] == 20
    assert rows[1]["threshold"] == clean["threshold"] == 50.0 and rows[0]["threshold"] == inf["threshold"] < 50
    assert rows[2]["model"] == HOSTILE and "model file not found" in rows[2]["error"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", r["name"]) for r in rows)
    html = (out / "index.html").read_text()
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.pt" in html
    with open(out / "summary.csv", newline="") as f:
        assert [r["model"] for r in csv.DictReader(f)][2] == HOSTILE  # data, not markup, in the CSV


def test_jsonl_manifest_takes_lists_and_numbers(zoo: Path) -> None:
    manifest = zoo / "zoo.jsonl"
    lines = [json.dumps({"model": "zoo/inf.pt", "labels": [0, 2, 4], "seed": 1, "max_steps": 4}), "",
             json.dumps({"model": "zoo/clean.pt", "samples": 30, "preset": "original", "max_steps": 3, "data": None})]
    manifest.write_text("\n".join(lines) + "\n")
    out = zoo / "out-jsonl"
    result = invoke("scan-many", str(manifest), "--data", str(zoo / "data.npz"), "--out", str(out),
                    "--block-size", "3")
    assert result.exit_code in (EXIT_CLEAN, EXIT_INFECTED), result.output
    inf = json.loads((out / "models" / "inf" / "report.json").read_text())
    clean = json.loads((out / "models" / "clean" / "report.json").read_text())
    assert inf["labels"] == [0, 2, 4] and inf["settings"]["seed"] == 1
    assert inf["settings"]["config"]["max_steps"] == 4
    assert clean["settings"]["samples"] == 30 and clean["settings"]["preset"] == "original"
    assert [r["verdict"] != "error" for r in summary(out)] == [True, True]


@pytest.mark.parametrize("content, fragments", [
    ("model,colour\nzoo/inf.pt,red\n", ["unknown column(s) colour", "known: model"]),
    ("model,factory\nzoo/inf.pt,os:system\n", ["column(s) factory can only be given on the command line"]),
    ("model,trust-pickle\nzoo/inf.pt,true\n", ["trust_pickle can only be given on the command line"]),
    ("model,samples\nzoo/inf.pt,5\n", ["line 2, column samples", "Invalid value for '--samples'"]),
    ("model,rule\nzoo/inf.pt,magic\n", ["column rule", "'magic' is not one of"]),
    ("model,mean\nzoo/inf.pt,0.5\n", ["zoo/inf.pt", "give --mean and --std together"]),
    ("path,seed\nzoo/inf.pt,1\n", ["header row with a `model` column"]),
    ("model\n", ["lists no models"]),
    ("model,seed\n,3\n", ["line 2: no model path"]),
    ("model,seed\nzoo/inf.pt,1,2\n", ["more cells than the header"]),
])
def test_bad_manifests_stop_the_batch_before_it_starts(zoo: Path, tmp_path: Path, content: str,
                                                       fragments: list[str]) -> None:
    manifest = zoo / f"bad-{abs(hash(content))}.csv"
    manifest.write_text(content)
    out = tmp_path / "o"
    assert_bad_input(invoke("scan-many", str(manifest), "--data", str(zoo / "data.npz"), "--out", str(out)),
                     *fragments)
    assert not out.exists()


def test_bad_batch_inputs(zoo: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    data = str(zoo / "data.npz")
    assert_bad_input(invoke("scan-many", str(zoo / "zoo"), "--out", str(out)), "--data is required")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no models here")
    assert_bad_input(invoke("scan-many", str(tmp_path / "empty"), "--data", data, "--out", str(out)),
                     "holds no model files")
    assert_bad_input(invoke("scan-many", str(tmp_path / "nope"), "--data", data, "--out", str(out)), "not found")
    assert_bad_input(invoke("scan-many", str(zoo / "zoo" / "inf.pt"), "--data", data, "--out", str(out)),
                     "neither a folder nor a manifest")
    (tmp_path / "m.jsonl").write_text('{"model": "a.pt"}\n{"model": \n')
    assert_bad_input(invoke("scan-many", str(tmp_path / "m.jsonl"), "--data", data, "--out", str(out)),
                     "line 2: not JSON")
    (tmp_path / "nodata.jsonl").write_text('{"model": "a.pt", "data": "x.npz"}\n{"model": "b.pt"}\n')
    assert_bad_input(invoke("scan-many", str(tmp_path / "nodata.jsonl"), "--out", str(out)),
                     "b.pt: no data to scan with: give --data")
    assert_bad_input(invoke("scan-many", str(zoo / "zoo"), "--data", data, "--out", str(out), "--resume",
                            "--force"), "contradict")
    assert_bad_input(invoke("scan-many", str(zoo / "zoo"), "--data", data, "--out", str(out), "--ray", "auto",
                            "--workers", "2"), "not both")
    assert not out.exists()


def test_unique_safe_folder_names() -> None:
    assert _unique_names(["a.pt", "a.onnx", "A.pt", "a-2.pt", "<b> c.pt", "..pt", "x.torchscript.pt"]) == \
        ["a", "a-2", "A-3", "a-2-2", "b_c", "model", "x.torchscript"]


# ---- resume ----------------------------------------------------------------------------------------


class CountScans:
    """Records (model folder, resume?) for every scan; `stop_in` interrupts that scan (counted from 1)
    after two labels, as Ctrl-C would."""

    def __init__(self, monkeypatch, stop_in: int | None = None) -> None:
        self.calls: list[tuple[str, bool]] = []
        original = NeuralCleanse.scan

        def scan(scanner, *args, checkpoint=None, resume=False, **kwargs):
            self.calls.append((Path(checkpoint).parent.name, resume))
            if len(self.calls) == stop_in:
                done: list[int] = []

                def hook(label: int) -> None:
                    done.append(label)
                    if len(done) == 2:
                        raise KeyboardInterrupt
                kwargs["on_label_done"] = hook
            return original(scanner, *args, checkpoint=checkpoint, resume=resume, **kwargs)

        monkeypatch.setattr(NeuralCleanse, "scan", scan)


def test_resume_scans_only_what_is_not_finished(zoo: Path, tmp_path: Path, monkeypatch) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for name, source in (("m1", "inf"), ("m2", "clean"), ("m3", "inf")):
        shutil.copy(zoo / "zoo" / f"{source}.pt", models / f"{name}.pt")
    out = tmp_path / "out"
    args = ("scan-many", str(models), "--data", str(zoo / "data.npz"), "--out", str(out), "--max-steps", "3",
            "--samples", "30", "--block-size", "1")

    first = CountScans(monkeypatch, stop_in=2)
    assert invoke(*args).exit_code == 130
    assert first.calls == [("m1", False), ("m2", False)]
    assert [e["row"]["name"] for e in journal.read(out / journal.JOURNAL_NAME)] == ["m1"]
    assert (out / "models" / "m2" / ".scan-state.pt").is_file() and not (out / "summary.json").exists()

    assert_bad_input(invoke(*args), "interrupted batch", "--resume", "--force")

    resumed = CountScans(monkeypatch)
    result = invoke(*args, "--resume")
    assert result.exit_code in (EXIT_CLEAN, EXIT_INFECTED), result.output
    assert resumed.calls == [("m2", True), ("m3", False)]  # m1 not scanned again; m2 goes on from its state
    assert [r["name"] for r in summary(out)] == ["m1", "m2", "m3"]
    assert all(r["verdict"] != "error" for r in summary(out))

    again = CountScans(monkeypatch)
    assert invoke(*args, "--resume").exit_code == result.exit_code
    assert again.calls == []

    assert_bad_input(invoke(*args), "already holds a finished batch", "--force")
    assert_bad_input(invoke(*args[:-2], "--block-size", "2", "--resume"), "other settings", "--force")

    forced = CountScans(monkeypatch)
    assert invoke(*args, "--force").exit_code == result.exit_code
    assert forced.calls == [("m1", False), ("m2", False), ("m3", False)]
    assert len(journal.read(out / journal.JOURNAL_NAME)) == 3


def test_resume_tries_failed_models_again(zoo: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "late.pt").write_text("not yet")
    args = ("scan-many", str(models), "--data", str(zoo / "data.npz"), "--out", str(tmp_path / "out"), *FAST)
    assert invoke(*args).exit_code == EXIT_BAD_INPUT
    shutil.copy(zoo / "zoo" / "inf.pt", models / "late.pt")  # the file arrives
    assert invoke(*args, "--resume").exit_code == EXIT_INFECTED
    assert [r["verdict"] for r in summary(tmp_path / "out")] == ["infected"]


def test_journal_survives_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / journal.JOURNAL_NAME
    entry = {"job": {"name": "a"}, "row": {"verdict": "clean"}}
    journal.start(path, fresh=True)
    journal.append(path, entry)
    with open(path, "a") as f:
        f.write('{"job": {"name": "b"}, "ro')  # a power cut in the middle of a line
    journal.start(path, fresh=False)
    journal.append(path, entry)
    assert journal.read(path) == [entry, entry]
