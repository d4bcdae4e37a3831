"""A batch's results: summary.csv and summary.json (one row per model, in the batch's order) and
index.html (suspicious models first, each linking to its own report page)."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from neuralcleanse.files import write_atomic, write_json
from neuralcleanse.report.html_report import _CSS, _duration, _e, _fact, _num, page_head
from neuralcleanse.report.scan_report import report_header

SUMMARY_CSV, SUMMARY_JSON, INDEX_HTML = "summary.csv", "summary.json", "index.html"
SUMMARY_FILES = (SUMMARY_CSV, SUMMARY_JSON, INDEX_HTML)
TESTS = ("nc", "noise", "mmbd")  # each test's label and p-value get a column of their own
COLUMNS = ("model", "name", "verdict", "flagged", "score", "anomaly_index", "min_label",
           *(f"{t}_{k}" for t in TESTS for k in ("label", "p")), "reason", "num_classes", "preset", "rule",
           "threshold", "data", "wall_time_s", "error", "warnings", "report")
VERDICT_ORDER = ("infected", "inconclusive", "error", "clean")

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
_INDEX_CSS = """
tr.infected td { background: var(--bad-bg); }
tr.error td { background: var(--note-bg); }
td.v { font-weight: 700; white-space: nowrap; }
tr.infected td.v { color: var(--bad); }
tr.clean td.v { color: var(--good); }
td.model { overflow-wrap: anywhere; }
.err { color: var(--bad); font-size: .85rem; overflow-wrap: anywhere; }
"""


def counts(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    return {v: sum(row.get("verdict") == v for row in rows) for v in VERDICT_ORDER}


def suspicious_first(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Infected, inconclusive, errors, clean; within a verdict the highest score first (scans with one test:
    the anomaly index; an infinite one, written as null, highest of all)."""
    def key(row: dict[str, Any]) -> tuple:
        verdict = row.get("verdict")
        rank = VERDICT_ORDER.index(verdict) if verdict in VERDICT_ORDER else VERDICT_ORDER.index("error")
        index = row.get("score") if row.get("score") is not None else row.get("anomaly_index")
        index = math.inf if index is None else float(index)
        return rank, -index if verdict != "error" else 0.0, str(row.get("model"))

    return sorted(rows, key=key)


def write_summary(out: str | Path, rows: Sequence[dict[str, Any]], *, source: str) -> dict[str, Path]:
    """Writes the three files into `out` (each atomically) and returns their paths."""
    out = Path(out)
    tally = counts(rows)
    paths = {"json": write_json(out / SUMMARY_JSON, {**report_header(), "source": source, "counts": tally,
                                                     "models": list(rows)})}
    text = _csv(rows)
    paths["csv"] = write_atomic(out / SUMMARY_CSV, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    page = _index(rows, source, tally)
    paths["html"] = write_atomic(out / INDEX_HTML, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return paths


def _csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in COLUMNS])
    return buf.getvalue()


def _cell(value: Any) -> Any:
    """Lists as the command line writes them (labels 0,3; warnings joined). Text that a spreadsheet
    would run as a formula (model paths and messages come from strangers) gets a leading quote."""
    if value is None:
        return ""
    if isinstance(value, list):
        value = ("; " if any(isinstance(v, str) for v in value) else ",").join(str(v) for v in value)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _test_cell(row: dict[str, Any], test: str) -> str:
    label, p = row.get(f"{test}_label"), row.get(f"{test}_p")
    if label is None or p is None:
        return "–"
    return f"{label} (p {p:.2g})"


def _index(rows: Sequence[dict[str, Any]], source: str, tally: dict[str, int]) -> str:
    body = []
    for row in suspicious_first(rows):
        verdict = str(row.get("verdict"))
        failed = verdict == "error"
        flagged = row.get("flagged") or []
        link = row.get("report")
        page = f'<a href="{_e(quote(link))}">report</a>' if isinstance(link, str) and link else ""
        error = f'<div class="err">{_e(row["error"])}</div>' if row.get("error") else ""
        warnings = row.get("warnings") or []
        note = f'<div class="sub">{len(warnings)} warning(s): {_e("; ".join(map(str, warnings)))}</div>' \
            if warnings else ""
        body.append(
            f'<tr class="{_e(verdict)}" data-verdict="{_e(verdict)}"><td class="v">{_e(verdict)}</td>'
            f'<td class="model">{_e(row.get("model"))}{error}{note}</td>'
            f'<td>{_e(", ".join(map(str, flagged)) or ("" if failed else "none"))}</td>'
            f'<td class="num">{"" if failed else _e(_num(row.get("score")))}</td>'
            f'<td class="num">{"" if failed else _e(_num(row.get("anomaly_index")))}</td>'
            + "".join(f'<td class="num">{"" if failed else _e(_test_cell(row, t))}</td>' for t in TESTS) +
            f'<td class="sub">{_e(row.get("reason") or "")}</td>'
            f'<td class="num">{_e(_duration(row.get("wall_time_s")))}</td><td>{page}</td></tr>')
    facts = [_fact(str(len(rows)), "models")] + [_fact(str(tally[v]), v) for v in VERDICT_ORDER]
    return "\n".join([
        *page_head(f"Neural Cleanse batch: {tally['infected']} infected of {len(rows)}", _CSS + _INDEX_CSS, csp=_CSP),
        "<body>",
        "<main>",
        "<h1>Neural Cleanse batch scan</h1>",
        f'<p class="sub">{_e(source)}</p>',
        f'<section class="verdict none"><div class="facts">{"".join(facts)}</div></section>',
        '<section><h2>Models, most suspicious first</h2>',
        '<p class="sub">Infected (highest score first), inconclusive, errors, then clean. Each test shows the label '
        "it points at and that label's p-value; the score is −log10 of the combined p-value. An infinite anomaly "
        "index (all other norms equal) shows as n/a.</p>",
        '<div class="scroll"><table id="models"><tr><th>verdict</th><th>model</th><th>flagged</th>'
        '<th class="num">score</th><th class="num">anomaly index</th><th class="num">Neural Cleanse</th>'
        '<th class="num">neuron noise</th><th class="num">MM-BD</th><th>how</th><th class="num">time</th>'
        "<th>page</th></tr>",
        *body,
        "</table></div></section>",
        "<footer>neuralcleanse · Neural Cleanse (Wang et al., IEEE S&amp;P 2019)</footer>",
        "</main>",
        "</body>",
        "</html>",
        "",
    ])
