"""The self-contained HTML report: content, order, mitigations, bad input, and a real browser."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cli_helpers import TARGET, invoke, train_tiny, write_npz
from neuralcleanse.cli import EXIT_CLEAN, EXIT_INFECTED
from neuralcleanse.errors import InputError
from neuralcleanse.report.html_report import write_html_report

pytestmark = pytest.mark.slow  # the quick subset (make test-quick) leaves this module out

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
DATA_PNG = re.compile(r'<img[^>]*\ssrc="data:image/png;base64,[A-Za-z0-9+/=]+"')
REMOTE = re.compile(r"""(?:src|href|action|srcset)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//|@import""",
                    re.IGNORECASE)


# ----------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A real scan of a tiny BadNets model by the CLI, with a pruning mitigation in scan/prune."""
    work = tmp_path_factory.mktemp("html")
    npz = write_npz(work / "data.npz")
    model = work / "m.pt"
    train_tiny(npz, model)
    scan = work / "scan"
    result = invoke("scan", str(model), "--data", str(npz), "--out", str(scan), "--samples", "80", "--max-steps", "20")
    assert result.exit_code == EXIT_INFECTED, result.output  # label 1's trigger: L1 ~4 against ~14 for the others
    result = invoke("mitigate", str(model), "--scan", str(scan), "--data", str(npz), "--method", "prune",
                    "--out", str(scan / "prune"), "--labels", str(TARGET), "-p", "step=0.1")
    assert result.exit_code == EXIT_CLEAN, result.output
    return scan, json.loads((scan / "report.json").read_text())


def fake_scan(folder: Path, norms: list[float], flagged: list[int], infected: bool, **extra) -> Path:
    """A scan folder written by hand (no torch): report.json, three PNGs per label and a chart."""
    labels = list(range(len(norms)))
    (folder / "triggers").mkdir(parents=True, exist_ok=True)
    images = {}
    for label in labels:
        images[str(label)] = {}
        for kind in ("mask", "pattern", "fusion"):
            rel = f"triggers/label_{label:04d}_{kind}.png"
            Image.new("L", (16, 16), 40 * label).save(folder / rel)
            images[str(label)][kind] = rel
    Image.new("RGB", (60, 30), "white").save(folder / "norms.png")
    report = {
        "tool": {"name": "neuralcleanse", "version": "test"}, "created": "2024-01-01T00:00:00+00:00",
        "model": {"path": "m.pt", "arch": "tiny"}, "data": {"name": "fake"},
        "infected": infected, "labels": labels, "flagged": flagged, "anomaly_index": 3.5 if infected else 1.0,
        "median_l1": 7.5, "mad": 2.5, "threshold": 2.0, "l1_norms": norms,
        "label_anomaly_index": [abs(n - 7.5) / 3.7 for n in norms], "success_rates": [0.99] * len(norms),
        "reached_threshold": [True] * len(norms), "settings": {"preset": "fast", "config": {"max_steps": 4}},
        "wall_time_s": 12.5, "images": images, "chart": "norms.png", **extra,
    }
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def fake_mitigation(folder: Path, method: str = "filter") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (60, 30), "white").save(folder / f"{method}.png")
    m = {"method": method, "labels": [1], "attack_trigger": "reversed",
         "before": {"clean_accuracy": 0.91, "attack_success": [{"target": 1, "rate": 0.97}]},
         "after": {"clean_accuracy": 0.88, "attack_success": [{"target": 1, "rate": 0.03}]},
         "baselines": {}, "filter": {"false_positive_rate": 0.05, "false_negative_rate": 0.125},
         "files": {"chart": f"{method}.png"}, "settings": {"fpr": 0.05}, "scan": "somewhere/scan"}
    (folder / "mitigation.json").write_text(json.dumps(m))
    return folder


def verdict(page: str) -> str:
    match = re.search(r'<section class="verdict[^"]*" id="verdict"><h2>(.*?)</h2>', page)
    assert match, "no verdict section"
    return match.group(1)


def card_order(page: str) -> list[int]:
    return [int(v) for v in re.findall(r'<div class="card[^"]*" data-label="(\d+)"', page)]


# ----------------------------------------------------------------------------------------------- the page

def test_real_scan_page(real_run) -> None:
    scan, report = real_run
    path = write_html_report(scan)
    assert path == scan / "report.html" and path.is_file()
    page = path.read_text()
    assert "INFECTED" in verdict(page) and report["flagged"] == [TARGET]
    assert len(DATA_PNG.findall(page)) == 3 * len(report["labels"]) + 2  # triggers, norms chart, pruning chart
    for label, files in report["images"].items():
        card = re.search(rf'<div class="card[^"]*" data-label="{label}">(.*?)</div></div></div>', page, re.S).group(1)
        assert len(DATA_PNG.findall(card)) == 3, label
        assert all(f"label {label} {kind}" in card for kind in files)
    order, flagged = card_order(page), report["flagged"]
    assert sorted(order) == sorted(report["labels"])
    assert set(order[: len(flagged)]) == set(flagged)
    rest = order[len(flagged):]
    norms = dict(zip(report["labels"], report["l1_norms"]))
    assert [norms[label] for label in rest] == sorted(norms[label] for label in rest)
    assert 'data-method="prune"' in page and "Mitigation: neuron pruning" in page
    assert "after neuron pruning" in page and "Pruning curve" in page
    assert f"attack success → label {TARGET}" in page
    assert not REMOTE.search(page), REMOTE.search(page)
    assert re.findall(r"\ssrc=\"([^\"]{0,5})", page) and all(s == "data:" for s in re.findall(r"\ssrc=\"([^\"]{0,5})", page))
    assert "<link" not in page.lower()
    assert f'data-images-embedded="{3 * len(report["labels"]) + 2}"' in page
    assert not list(scan.glob(".report.html.*"))  # no temporary file left behind


def test_flagged_first_then_ascending_norm(tmp_path: Path) -> None:
    folder = fake_scan(tmp_path / "scan", norms=[5.0, 30.0, 2.0, 10.0, 1.0], flagged=[1, 4], infected=True)
    page = write_html_report(folder).read_text()
    assert card_order(page) == [4, 1, 2, 0, 3]  # flagged (by norm) first, though label 1's norm is the largest
    assert "INFECTED" in verdict(page)
    assert page.count('class="badge">FLAGGED') == 2
    assert "no scan" not in page.lower() and "Mitigation" not in page
    assert "12.5 s" in page and "max_steps" in page and "tiny" in page  # wall time, settings, model


def test_clean_verdict_and_custom_out(tmp_path: Path) -> None:
    folder = fake_scan(tmp_path / "scan", norms=[5.0, 6.0, 7.0], flagged=[], infected=False, anomaly_index=None)
    out = write_html_report(folder, tmp_path / "pages" / "page.html")
    assert out == tmp_path / "pages" / "page.html" and not (folder / "report.html").exists()
    page = out.read_text()
    assert "Clean" in verdict(page) and "INFECTED" not in page
    assert card_order(page) == [0, 1, 2]


def test_restarts_are_explained_on_the_page(tmp_path: Path) -> None:
    settings = {"preset": "fast", "restarts": {"seeds": [0, 1, 2], "anomaly_indices": [2.73, 2.32, 2.45],
                                               "chosen_seed": 2, "combined": "median seed"}}
    folder = fake_scan(tmp_path / "scan", norms=[5.0, 6.0, 7.0], flagged=[], infected=False, settings=settings)
    page = write_html_report(folder).read_text()
    assert "seeds 0, 1, 2 (indices 2.73, 2.32, 2.45)" in page and "seed 2's, the median" in page
    plain = write_html_report(fake_scan(tmp_path / "one", norms=[5.0, 6.0, 7.0], flagged=[], infected=False)).read_text()
    assert "the median" not in plain
    confirmed = {"preset": "fast", "confirmed": {"preset": "original", "anomaly_index_first": 2.31}}
    page = write_html_report(fake_scan(tmp_path / "slow", norms=[5.0, 6.0, 7.0], flagged=[], infected=False,
                                       settings=confirmed)).read_text()
    assert "first index (2.31) lay near the threshold" in page and "with the original preset" in page
    assert "scanned again" not in plain


def test_missing_image_shows_placeholder(tmp_path: Path) -> None:
    folder = fake_scan(tmp_path / "scan", norms=[5.0, 6.0], flagged=[], infected=False)
    (folder / "triggers" / "label_0001_pattern.png").unlink()
    (folder / "norms.png").unlink()
    page = write_html_report(folder).read_text()
    assert "image missing: triggers/label_0001_pattern.png" in page
    assert "image missing: norms.png" in page
    assert len(DATA_PNG.findall(page)) == 5


def test_text_is_escaped(tmp_path: Path) -> None:
    evil = '<script>alert("x")</script>'
    folder = fake_scan(tmp_path / "scan", norms=[5.0, 6.0], flagged=[], infected=False,
                       model={"path": evil}, settings={evil: evil})
    page = write_html_report(folder).read_text()
    assert evil not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


def test_mitigations_beside_inside_and_given(tmp_path: Path) -> None:
    folder = fake_scan(tmp_path / "scan", norms=[5.0, 1.0], flagged=[1], infected=True)
    fake_mitigation(folder / "filtered")
    elsewhere = fake_mitigation(tmp_path / "other", "unlearn")
    page = write_html_report(folder).read_text()
    assert page.count('<section class="mitigation"') == 1 and "false negatives" in page and "12.5%" in page
    page = write_html_report(folder, mitigations=[elsewhere, folder / "filtered"]).read_text()  # no repeats
    assert page.count('<section class="mitigation"') == 2 and "Mitigation: unlearning" in page
    assert len(DATA_PNG.findall(page)) == 3 * 2 + 1 + 2


def test_mitigation_only_folder(tmp_path: Path) -> None:
    folder = fake_mitigation(tmp_path / "filter")
    page = write_html_report(folder).read_text()
    assert "No scan in this folder" in verdict(page)
    assert "Mitigation: input filter" in page and "somewhere/scan" in page
    assert "data-label" not in page


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no report.json or mitigation.json"):
        write_html_report(tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        write_html_report(tmp_path / "absent")
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read"):
        write_html_report(tmp_path)
    folder = fake_scan(tmp_path / "scan", norms=[5.0, 6.0], flagged=[], infected=False)
    with pytest.raises(InputError, match="no mitigation.json"):
        write_html_report(folder, mitigations=[tmp_path / "nowhere"])
    assert not (tmp_path / "report.html").exists()


# ----------------------------------------------------------------------------------------------- a real browser

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                                    reason=f"{CHROMIUM} not installed (Debian: apt-get install -y chromium)")


def render(page: Path, profile: Path) -> str:
    """The DOM after the page's load event, as headless Chromium sees it."""
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def image_counts(dom: str) -> tuple[int, int, int]:
    body = re.search(r"<body[^>]*>", dom).group(0)
    found = dict(re.findall(r'data-images-(\w+)="(\d+)"', body))
    assert {"embedded", "loaded", "total"} <= set(found), f"the page's load script did not run: {body}"
    return int(found["embedded"]), int(found["loaded"]), int(found["total"])


@needs_chromium
def test_chromium_renders_verdict_and_every_image(real_run, tmp_path: Path) -> None:
    scan, report = real_run
    dom = render(write_html_report(scan, tmp_path / "page.html"), tmp_path / "profile")
    assert "INFECTED" in verdict(dom)
    embedded, loaded, total = image_counts(dom)
    assert embedded == total == loaded == 3 * len(report["labels"]) + 2


@needs_chromium
def test_chromium_counts_a_broken_image(tmp_path: Path) -> None:
    """The check can fail: an undecodable PNG lowers the loaded count."""
    folder = fake_scan(tmp_path / "scan", norms=[5.0, 1.0], flagged=[1], infected=True)
    # PNG's signature (so the page embeds it: it checks only the first bytes) with no image after it.
    (folder / "triggers" / "label_0000_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a png")
    dom = render(write_html_report(folder), tmp_path / "profile")
    assert "INFECTED" in verdict(dom)
    assert image_counts(dom) == (7, 6, 7)


@needs_chromium
def test_screenshot_script(tmp_path: Path) -> None:
    folder = fake_scan(tmp_path / "scan", norms=[5.0, 1.0], flagged=[1], infected=True)
    png = tmp_path / "shot.png"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "screenshot_report.py"), str(folder), str(png),
                           "--width", "800", "--height", "600"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with Image.open(png) as img:
        assert img.size == (800, 600)
        low, high = img.convert("L").getextrema()
        assert high - low > 50  # something was drawn
    assert (folder / "report.html").is_file()


def test_screenshot_script_bad_folder(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "screenshot_report.py"), str(tmp_path),
                           str(tmp_path / "x.png")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
