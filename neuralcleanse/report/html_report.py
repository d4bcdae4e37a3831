"""One self-contained HTML page for a finished scan (and any mitigations beside it).

The page needs no server and no network: images are embedded as base64 data URIs, the CSS is
inline and a Content-Security-Policy forbids loading anything else. A tiny inline script (allowed
by its hash, and not needed to read the page) records on <body> how many images the browser
decoded: `data-images-loaded` and `data-images-total`, next to `data-images-embedded` written
here, so a headless browser can check that every picture really shows.

    >>> write_html_report("runs/scan")            # -> runs/scan/report.html
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
from importlib import resources
from html import escape
from pathlib import Path
from typing import Any, Sequence

from neuralcleanse.errors import InputError
from neuralcleanse.files import resolve_inside, write_atomic
from neuralcleanse.report.mitigation_report import MITIGATION_NAME
from neuralcleanse.report.scan_report import REPORT_NAME as SCAN_NAME
from neuralcleanse.report.scan_report import TRIGGERS_NAME, load_scan
from neuralcleanse.report.validate import check_mitigation_report, check_scan_report, read_json_object

HTML_NAME = "report.html"
MAX_IMAGE_BYTES = 16 * 2**20
_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))
log = logging.getLogger(__name__)

METHOD_NAMES = {"filter": "input filter", "prune": "neuron pruning", "unlearn": "unlearning"}
BASELINE_NAMES = {"fine_tune_no_trigger": "baseline: fine-tune, no trigger",
                  "unlearn_real_trigger": "baseline: unlearn with the real trigger"}

# Counts the images the browser could decode, once everything has loaded.
_SCRIPT = ("addEventListener('load',function(){var im=document.images,n=0;"
           "for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)n++}"
           "document.body.dataset.imagesLoaded=n;document.body.dataset.imagesTotal=im.length});")
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
_CSP = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{_SCRIPT_HASH}'; "
        "base-uri 'none'; form-action 'none'")

# Package data, so the page's look is edited as CSS, not inside a Python string.
_CSS = (resources.files("neuralcleanse.report") / "report.css").read_text(encoding="utf-8")


def page_head(title: str, style: str, csp: str = _CSP, script: str | None = None) -> list[str]:
    """A page's opening lines up to </head>: charset, Content-Security-Policy, viewport, the title
    (escaped here), the style and, when given, the one script the policy allows."""
    return ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>", f"<style>{style}</style>",
            *([f"<script>{script}</script>"] if script else []), "</head>"]


def write_html_report(run_dir: str | Path, out: str | Path | None = None,
                      mitigations: Sequence[str | Path] = ()) -> Path:
    """Writes one self-contained HTML page (default `run_dir/report.html`) for the scan in `run_dir`,
    with every mitigation.json found in `run_dir`, in its immediate sub-folders or in the
    `mitigations` folders given. Returns the page's path.

    Raises InputError when `run_dir` holds neither a report.json nor a mitigation.json, or one of
    them cannot be read."""
    folder = Path(run_dir)
    scan, found = read_run_folder(folder, mitigations)
    page = _Page(folder)
    body = page.render(scan, found)
    target = Path(out) if out is not None else folder / HTML_NAME

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(body)

    return write_atomic(target, write)


def _image_type(raw: bytes) -> str | None:
    """The MIME type from the file's first bytes: the name in the JSON is not trusted."""
    for magic, mime in _IMAGE_MAGIC:
        if raw.startswith(magic):
            return mime
    return None


def read_run_folder(folder: Path, mitigations: Sequence[str | Path] = ()
                    ) -> tuple[dict[str, Any] | None, list[tuple[Path, dict[str, Any]]]]:
    """The checked report.json (None when absent) and every mitigation.json the page would show.

    Commands that end by writing the page call this first, so a damaged file costs no work."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give the `out` folder of a finished scan or mitigation")
    scan = None
    if (folder / SCAN_NAME).is_file():
        if (folder / TRIGGERS_NAME).exists():
            scan = load_scan(folder)[1]  # checks triggers.npz against report.json too
        else:  # scans before 0.2 wrote no triggers.npz; their pages still render
            scan = read_json_object(folder / SCAN_NAME)
            check_scan_report(scan, folder / SCAN_NAME, partial=True)
    found = []
    for d in _find_mitigations(folder, mitigations):
        m = read_json_object(d / MITIGATION_NAME)
        check_mitigation_report(m, d / MITIGATION_NAME)
        found.append((d, m))
    if scan is None and not found:
        raise InputError(f"{folder} holds no {SCAN_NAME} or {MITIGATION_NAME}; give the `out` folder of a finished "
                         f"scan or mitigation, or run the scan first")
    return scan, found


def _find_mitigations(folder: Path, given: Sequence[str | Path]) -> list[Path]:
    """Folders holding a mitigation.json: `folder`, its immediate sub-folders, then `given` (no repeats)."""
    found = [folder] if (folder / MITIGATION_NAME).is_file() else []
    for p in sorted(folder.glob(f"*/{MITIGATION_NAME}")):
        if not p.is_file():
            continue
        if resolve_inside(folder, p.parent.name) is None:
            log.warning("ignoring %s: the sub-folder links outside %s", p, folder)
            continue
        found.append(p.parent)
    for g in given:
        p = Path(g)
        if p.name == MITIGATION_NAME and p.is_file():
            p = p.parent
        if not (p / MITIGATION_NAME).is_file():
            raise InputError(f"{p} holds no {MITIGATION_NAME}; give the `out` folder of a finished mitigation")
        found.append(p)
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


# ----------------------------------------------------------------------------------------------- formatting

def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num(v: Any, digits: int = 2) -> str:
    if not _is_num(v) or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a" if v is None or _is_num(v) else str(v)
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}%" if _is_num(v) and math.isfinite(v) else "n/a"


def _duration(v: Any) -> str:
    if not _is_num(v) or not math.isfinite(v):
        return "n/a"
    if v < 60:
        return f"{v:.1f} s"
    minutes, seconds = divmod(int(round(v)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min {seconds} s" if hours else f"{minutes} min {seconds} s"


def _labels(values: Any) -> str:
    if not values:
        return "none"
    return ", ".join(str(v) for v in values) if isinstance(values, (list, tuple)) else str(values)


def _scalar(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return "null" if v is None else str(v)


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as dotted keys; lists of plain values stay whole."""
    rows: list[tuple[str, Any]] = []
    if not isinstance(d, dict):
        return [(prefix or "value", d)]
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            rows += _flatten(v, key)
        else:
            rows.append((key, v))
    return rows


def _kv_table(d: Any, skip: Sequence[str] = ()) -> str:
    rows = []
    for key, v in _flatten(d):
        if key in skip:
            continue
        if isinstance(v, list) and len(v) > 12:
            text = f"{len(v)} values: {json.dumps(v[:8])[:-1]}, …]" if all(not isinstance(x, (dict, list)) for x in v) \
                else f"{len(v)} entries"
        else:
            text = _scalar(v)
        rows.append(f"<tr><th>{_e(key)}</th><td>{_e(text)}</td></tr>")
    if not rows:
        return '<p class="sub">none recorded</p>'
    return f'<div class="scroll"><table class="kv">{"".join(rows)}</table></div>'


TEST_NAMES = {"nc": "Neural Cleanse", "noise": "Neuron noise", "mmbd": "MM-BD"}
TEST_LOOKS = {"nc": "the smallest trigger that sends inputs to each label",
              "noise": "where wrong answers pile up when neurons are perturbed",
              "mmbd": "the largest logit margin each label reaches"}


def _p(v: Any) -> str:
    if not _is_num(v):
        return "–"
    return f"{v:.2g}" if v >= 1e-3 else f"{v:.1e}"


def _combined_words(verdict: str, flagged: Any, combined: dict[str, Any]) -> tuple[str, str]:
    """The headline and sentence of a verdict reached by several tests."""
    reason = _e(combined.get("reason", ""))
    if verdict == "inconclusive":
        return ("Inconclusive: the tests do not agree",
                f"{reason}. Fewer tests spoke than the verdict needs, so this is neither a clean verdict nor an "
                "infected one. Look at each test's evidence below and at the reversed triggers.")
    if verdict == "infected":
        return ("INFECTED: backdoor suspected",
                f"{reason}. The reversed trigger below shows what sends inputs to label(s) {_e(_labels(flagged))}.")
    return "Clean: no backdoor found", f"{reason}."


def _fact(value: str, label: str) -> str:
    return f'<div class="fact"><b>{_e(value)}</b><span>{_e(label)}</span></div>'


# ----------------------------------------------------------------------------------------------- the page

class _Page:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.embedded = 0

    def image(self, base: Path, rel: Any, alt: str, cls: str = "") -> str:
        """The picture at base/rel as a data URI, or a visible placeholder when it is missing, is not
        an image, or lies outside `base` (the JSON that names it may come from a stranger)."""
        if not isinstance(rel, str) or not rel:
            return f'<div class="missing">no {_e(alt)} image recorded</div>'
        path = resolve_inside(base, rel)
        if path is None:
            log.warning("not embedding %r named in %s: it lies outside that folder", rel, base)
            return f'<div class="missing">refused: {_e(rel)} lies outside the run folder</div>'
        try:
            if path.stat().st_size > MAX_IMAGE_BYTES:
                return f'<div class="missing">image too large: {_e(rel)}</div>'
            raw = path.read_bytes()
        except OSError:
            return f'<div class="missing">image missing: {_e(rel)}</div>'
        mime = _image_type(raw)
        if mime is None:
            log.warning("not embedding %s: it is not a PNG, JPEG or GIF image", path)
            return f'<div class="missing">not an image: {_e(rel)}</div>'
        self.embedded += 1
        uri = f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"
        class_attr = f' class="{_e(cls)}"' if cls else ""
        return f'<img{class_attr} src="{uri}" alt="{_e(alt)}">'

    def render(self, scan: dict[str, Any] | None, mitigations: list[tuple[Path, dict[str, Any]]]) -> str:
        parts = [self.verdict(scan, mitigations)]
        if scan is not None:
            parts += [part for part in (self.tests(scan), self.chart(scan), self.triggers(scan)) if part]
        parts += [self.mitigation(d, m) for d, m in mitigations]
        if scan is not None:
            parts.append(self.run_info(scan))
        tool = (scan or (mitigations[0][1] if mitigations else {})).get("tool") or {}
        created = (scan or (mitigations[0][1] if mitigations else {})).get("created", "")
        footer = (f"<footer>{_e(tool.get('name', 'neuralcleanse'))} {_e(tool.get('version', ''))}"
                  f"{' · ' + _e(created) if created else ''} · Neural Cleanse (Wang et al., IEEE S&amp;P 2019)</footer>")
        if scan is None:
            title = "no scan"
        else:
            title = {"inconclusive": "Inconclusive"}.get(scan.get("verdict"), "INFECTED" if scan.get("infected")
                                                         else "Clean")
        return "\n".join([
            *page_head(f"Neural Cleanse report: {title} ({self.folder.resolve().name})", _CSS, script=_SCRIPT),
            f'<body data-images-embedded="{self.embedded}">',
            "<main>",
            "<h1>Neural Cleanse backdoor report</h1>",
            f'<p class="sub">{_e(self.folder.resolve())}</p>',
            *parts,
            footer,
            "</main>",
            "</body>",
            "</html>",
            "",
        ])

    # -- sections

    def verdict(self, scan: dict[str, Any] | None, mitigations: list) -> str:
        if scan is None:
            kinds = ", ".join(sorted({METHOD_NAMES.get(m.get("method"), str(m.get("method"))) for _, m in mitigations}))
            scan_dir = next((m.get("scan") for _, m in mitigations if m.get("scan")), None)
            where = f" The scan it used was in {_e(scan_dir)}." if scan_dir else ""
            return ('<section class="verdict none" id="verdict"><h2>No scan in this folder</h2>'
                    f'<p>This folder holds mitigation results only ({_e(kinds)}), no {SCAN_NAME}; the verdict is in '
                    f"the scan's own report.{where}</p></section>")
        infected = bool(scan.get("infected"))
        flagged = scan.get("flagged") or []
        threshold = scan.get("threshold")
        verdict = scan.get("verdict") or ("infected" if infected else "clean")
        rule = scan.get("rule") if isinstance(scan.get("rule"), dict) else {"name": "published"}
        combined = scan.get("combined") if isinstance(scan.get("combined"), dict) else None
        if combined is not None:
            head, text = _combined_words(verdict, flagged, combined)
        elif verdict == "inconclusive":
            head = "Inconclusive: trigger size cannot decide"
            text = (f"Every label's reversed trigger is small (median L1 norm {_e(_num(scan.get('median_l1')))}): "
                    "any label is easy to reach with a small patch, so a backdoor's trigger would not stand out. "
                    "This is not a clean verdict. Look at the reversed triggers below, or test with another method.")
        elif infected:
            head = "INFECTED: backdoor suspected"
            text = (f"The reversed trigger of label(s) {_e(_labels(flagged))} is abnormally small compared with the "
                    f"other labels' (anomaly index above {_e(_num(threshold))}). An input carrying such a small "
                    "pattern is sent to that label.")
        else:
            head = "Clean: no backdoor found"
            text = (f"No label's reversed trigger is abnormally small (every anomaly index is at most "
                    f"{_e(_num(threshold))}).")
        settings = scan.get("settings")
        restarts = settings.get("restarts") if isinstance(settings, dict) else None
        if isinstance(restarts, dict) and restarts.get("anomaly_indices"):
            text += (f" The first index lay near the threshold, so the scan ran with seeds "
                     f"{_e(', '.join(str(v) for v in restarts.get('seeds') or []))} (indices "
                     f"{_e(', '.join(_num(v) for v in restarts['anomaly_indices']))}); the one shown is seed "
                     f"{_e(restarts.get('chosen_seed'))}'s, the median.")
        confirmed = settings.get("confirmed") if isinstance(settings, dict) else None
        if isinstance(confirmed, dict) and confirmed.get("preset"):
            text += (f" The first index ({_e(_num(confirmed.get('anomaly_index_first')))}) lay near the threshold, so "
                     f"the labels were scanned again with the {_e(confirmed['preset'])} preset; the figures shown "
                     "are that scan's.")
        facts = [
            _fact(_labels(flagged), "flagged label(s)"),
            *([_fact(_num(scan.get("score")), "score (−log10 p)")] if combined is not None else []),
            _fact(_num(scan.get("anomaly_index")), "anomaly index"),
            _fact(_num(threshold), "threshold"),
            _fact(str(rule.get("name")), "rule"),
            _fact(_num(scan.get("median_l1")), "median L1 norm"),
            _fact(_num(scan.get("mad")), "MAD of L1 norms"),
            _fact(str(len(scan.get("labels") or [])), "labels scanned"),
            _fact(_duration(scan.get("wall_time_s")), "wall time"),
        ]
        cls = {"infected": "infected", "inconclusive": "none"}.get(verdict, "clean")
        return (f'<section class="verdict {cls}" id="verdict"><h2>{_e(head)}</h2><p>{text}</p>'
                f'<div class="facts">{"".join(facts)}</div></section>')

    def tests(self, scan: dict[str, Any]) -> str:
        """Each test's evidence side by side, and how the verdict was reached."""
        detectors = scan.get("detectors") if isinstance(scan.get("detectors"), dict) else {}
        combined = scan.get("combined") if isinstance(scan.get("combined"), dict) else {}
        if not detectors:
            return ""
        speaking = combined.get("speaking") if isinstance(combined.get("speaking"), dict) else {}
        rule = combined.get("rule") if isinstance(combined.get("rule"), dict) else {}
        counted = rule.get("count") if isinstance(rule.get("count"), list) else list(detectors)
        rows = []
        for name, e in detectors.items():
            e = e if isinstance(e, dict) else {}
            ran = e.get("p_value") is not None
            said = ("did not run" if not ran else "advisory" if name not in counted else
                    "speaks" if name in speaking else "silent")
            cls = "after" if name in speaking else ""
            rows.append(f'<tr class="{cls}"><td>{_e(TEST_NAMES.get(name, name))}</td><td>{_e(TEST_LOOKS.get(name, ""))}</td>'
                        f'<td class="num">{_e(e.get("candidate") if ran else "–")}</td>'
                        f'<td class="num">{_e(_p(e.get("p_value")))}</td><td class="num">{_e(_num(e.get("alpha")))}</td>'
                        f"<td>{_e(said)}{(' — ' + _e(e.get('note'))) if e.get('note') else ''}</td>"
                        f'<td class="num">{_e(_duration(e.get("wall_time_s")))}</td></tr>')
        m = max(1, sum(1 for n, e in detectors.items() if isinstance(e, dict) and e.get("p_value") is not None
                       and n in counted))
        return ('<section id="tests"><h2>The tests</h2>'
                f'<p>{_e(combined.get("reason", ""))}. A test <i>speaks</i> when the label it points at has a p-value '
                f"at most its level divided by the {m} counting test(s) that ran; an infected verdict needs "
                f'{_e(rule.get("quorum", 1))} speaking. <i>Advisory</i> tests are shown, not counted: on the models '
                "we measured they flagged clean ones too often to decide alone (docs/results.md).</p>"
                '<div class="scroll"><table class="results"><tr><th>test</th><th>looks at</th>'
                '<th class="num">label</th><th class="num">p-value</th><th class="num">level</th><th></th>'
                f'<th class="num">time</th></tr>{"".join(rows)}</table></div></section>')

    def chart(self, scan: dict[str, Any]) -> str:
        return ('<section id="chart"><h2>Trigger norms per label</h2>'
                f'{self.image(self.folder, scan.get("chart"), "L1 norms of the reversed triggers", "chart")}'
                "</section>")

    def triggers(self, scan: dict[str, Any]) -> str:
        labels = list(scan.get("labels") or [])
        n = len(labels)

        def column(key: str) -> list[Any]:
            values = scan.get(key)
            values = list(values) if isinstance(values, list) else []
            return values + [None] * (n - len(values))

        norms, rates, indices = column("l1_norms"), column("success_rates"), column("label_anomaly_index")
        reached = column("reached_threshold")
        flagged = scan.get("flagged") or []
        images = scan.get("images") if isinstance(scan.get("images"), dict) else {}

        def norm_key(i: int) -> float:
            v = norms[i]
            return v if _is_num(v) and math.isfinite(v) else math.inf

        order = sorted(range(n), key=lambda i: (labels[i] not in flagged, norm_key(i), i))
        cards = []
        for i in order:
            label = labels[i]
            is_flagged = label in flagged
            files = images.get(str(label))
            files = files if isinstance(files, dict) else {}
            figs = "".join(
                f"<figure>{self.image(self.folder, files.get(kind), f'label {label} {kind}')}"
                f"<figcaption>{kind}</figcaption></figure>" for kind in ("mask", "pattern", "fusion"))
            badges = '<span class="badge">FLAGGED</span>' if is_flagged else ""
            if reached[i] is False:
                badges += '<span class="badge warn" title="the search stopped before the trigger reached the ' \
                          'attack threshold">not converged</span>'
            cards.append(
                f'<div class="card{" flagged" if is_flagged else ""}" data-label="{_e(label)}">'
                f"<h3>Label {_e(label)}{badges}</h3>"
                f'<div class="imgs">{figs}</div>'
                f'<div class="stats"><div><b>{_e(_num(norms[i]))}</b>L1 norm</div>'
                f"<div><b>{_e(_pct(rates[i]))}</b>success rate</div>"
                f"<div><b>{_e(_num(indices[i]))}</b>anomaly index</div></div></div>")
        return ('<section id="triggers"><h2>Reversed triggers</h2>'
                '<p class="sub">Flagged labels first, then the others by ascending L1 norm. <i>mask</i>: where the '
                "trigger is; <i>pattern</i>: what it paints; <i>fusion</i>: mask × pattern, what it adds to an "
                "input.</p>"
                f'<div class="cards">{"".join(cards) or "<p>no labels in this scan</p>"}</div></section>')

    def run_info(self, scan: dict[str, Any]) -> str:
        settings = scan.get("settings") if isinstance(scan.get("settings"), dict) else {}
        general = {"created": scan.get("created"), "wall time": _duration(scan.get("wall_time_s")),
                   "wall time (s)": scan.get("wall_time_s"), "image passes": scan.get("image_passes"),
                   "tool": scan.get("tool")}
        general = {k: v for k, v in general.items() if v is not None}
        return ('<section id="run"><h2>Model, data and settings</h2><div class="two">'
                f'<div><h3>Model</h3>{_kv_table(scan.get("model") or {})}'
                f'<h3>Data</h3>{_kv_table(scan.get("data") or {})}'
                f"<h3>Run</h3>{_kv_table(general)}</div>"
                f"<div><h3>Scan settings</h3>{_kv_table(settings)}</div>"
                "</div></section>")

    def mitigation(self, folder: Path, m: dict[str, Any]) -> str:
        method = str(m.get("method", "?"))
        trigger = str(m.get("attack_trigger", "?"))
        try:
            where = folder.resolve().relative_to(self.folder.resolve()).as_posix()
            where = "this folder" if where == "." else where
        except ValueError:
            where = str(folder)
        before, after = m.get("before") or {}, m.get("after") or {}
        targets = [a.get("target") for a in (before.get("attack_success") or []) if isinstance(a, dict)]
        rows = [("before", before, ""), (f"after {METHOD_NAMES.get(method, method)}", after, "after")]
        baselines = m.get("baselines") if isinstance(m.get("baselines"), dict) else {}
        rows += [(BASELINE_NAMES.get(k, k), v, "") for k, v in baselines.items() if isinstance(v, dict)]
        head = "".join(f'<th class="num">attack success → label {_e(t)}</th>' for t in targets)
        body = []
        for name, meas, cls in rows:
            rates = {a.get("target"): a.get("rate") for a in (meas.get("attack_success") or []) if isinstance(a, dict)}
            cells = "".join(f'<td class="num">{_e(_pct(rates.get(t)))}</td>' for t in targets)
            body.append(f'<tr class="{cls}"><td>{_e(name)}</td>'
                        f'<td class="num">{_e(_pct(meas.get("clean_accuracy")))}</td>{cells}</tr>')
        table = (f'<div class="scroll"><table class="results"><tr><th></th><th class="num">clean accuracy</th>{head}</tr>{"".join(body)}</table></div>'
                 f'<p class="sub">Attack success measured with the {_e(trigger)} trigger on held-out data.</p>')
        rev = m.get("reversed_trigger") if isinstance(m.get("reversed_trigger"), dict) else {}
        rev_line = ""
        if rev:
            def worst(meas: Any) -> str:
                rates = [a.get("rate") for a in ((meas or {}).get("attack_success") or []) if isinstance(a, dict)]
                rates = [r for r in rates if _is_num(r)]
                return _pct(max(rates)) if rates else "n/a"

            rev_line = (f'<p class="sub">Reversed trigger\'s success: {_e(worst(rev.get("before")))} before, '
                        f'{_e(worst(rev.get("after")))} after.</p>')
        details = []
        filt = m.get("filter") if isinstance(m.get("filter"), dict) else None
        if filt:
            details += [_fact(_pct(filt.get("false_positive_rate")), "false positives (clean inputs flagged)"),
                        _fact(_pct(filt.get("false_negative_rate")), "false negatives (triggered inputs missed)")]
        pruning = m.get("pruning") if isinstance(m.get("pruning"), dict) else None
        if pruning:
            fraction = pruning.get("pruned_fraction", pruning.get("fraction"))
            units = pruning.get("pruned_units")
            details.append(_fact(_pct(fraction), "of the layer pruned"))
            if isinstance(units, list):
                details.append(_fact(str(len(units)), "units pruned"))
            curve = pruning.get("curve")
            if isinstance(curve, list):
                details.append(_fact(str(len(curve)), "pruning steps measured"))
        facts = f'<div class="facts">{"".join(details)}</div>' if details else ""
        notes = "".join(f'<p class="note">{_e(d.get("note"))}</p>' for d in (filt, pruning, m.get("unlearning"))
                        if isinstance(d, dict) and d.get("note"))
        extra = {k: m.get(k) for k in ("filter", "pruning", "unlearning") if isinstance(m.get(k), dict)}
        curve = self.curve_table(pruning.get("curve") if pruning else None)
        chart = self.image(folder, (m.get("files") or {}).get("chart"), f"{method} chart", "chart")
        files = {k: v for k, v in (m.get("files") or {}).items() if k != "chart"}
        return (f'<section class="mitigation" id="mitigation-{_e(where)}" data-method="{_e(method)}">'
                f"<h2>Mitigation: {_e(METHOD_NAMES.get(method, method))}</h2>"
                f'<p class="sub">folder {_e(where)} · label(s) {_e(_labels(m.get("labels")))} · '
                f"{_e(trigger)} trigger · {_e(_duration(m.get('wall_time_s')))}</p>"
                f"{self.rescan_block(m)}{table}{rev_line}{facts}{notes}"
                f'<div style="margin-top:12px">{chart}</div>'
                f"<details><summary>settings, details and files</summary><div class=\"two\">"
                f'<div><h3>Settings</h3>{_kv_table(m.get("settings") or {})}</div>'
                f'<div><h3>Details</h3>{_kv_table(extra, skip=("pruning.curve",))}{curve}'
                f"<h3>Files</h3>{_kv_table(files)}</div>"
                "</div></details></section>")

    @staticmethod
    def rescan_block(m: dict[str, Any]) -> str:
        """The repair's verdict, by a fresh scan of the patched model, with the treated labels' figures."""
        verdict = m.get("verdict")
        if not isinstance(verdict, str):
            return ""
        r = m.get("rescan") if isinstance(m.get("rescan"), dict) else {}
        good = r.get("backdoor_removed") is True
        treated = r.get("treated_labels") if isinstance(r.get("treated_labels"), list) else []
        columns = [r.get(f) if isinstance(r.get(f), dict) else {}
                   for f in ("l1_norms_before", "l1_norms_after", "anomaly_index_before", "anomaly_index_after")]
        rows = []
        for key in treated:
            cells = [column.get(str(key)) for column in columns]
            rows.append(f"<tr><td>{_e(key)}</td>" + "".join(f'<td class="num">{_e(_num(c))}</td>' for c in cells)
                        + "</tr>")
        table = ('<div class="scroll"><table class="results"><tr><th>label</th><th class="num">L1 norm before</th>'
                 '<th class="num">after</th><th class="num">anomaly index before</th><th class="num">after</th></tr>'
                 f'{"".join(rows)}</table></div>') if rows else ""
        how = (f"A new scan of the patched model ({_e(len(r.get('labels_rescanned') or []))} labels, rule "
               f"{_e(r.get('rule'))}) decides, not the reversed trigger's figures." if r else "")
        # No tick for "not found": measured, a working real trigger often survives an unflagged rescan.
        caveat = " That is necessary, not proof: the real trigger may still work." if good else ""
        return (f'<p class="note" data-verdict="{_e(verdict)}"><b>{"" if good else "⚠ "}{_e(verdict)}</b>. '
                f'{how}{caveat}</p><div style="margin-bottom:14px">{table}</div>')

    @staticmethod
    def curve_table(curve: Any) -> str:
        """The pruning curve, one row per step."""
        if not isinstance(curve, list) or not curve or not all(isinstance(c, dict) for c in curve):
            return ""
        cols = [("fraction", "pruned", _pct), ("units", "units", lambda v: _num(v)),
                ("clean_accuracy", "clean accuracy", _pct), ("reversed_success", "reversed trigger", _pct),
                ("attack_success", "real trigger", _pct)]
        cols = [c for c in cols if any(c[0] in step for step in curve)]
        head = "".join(f'<th class="num">{_e(title)}</th>' for _, title, _ in cols)
        rows = "".join("<tr>" + "".join(f'<td class="num">{_e(fmt(step.get(key)))}</td>' for key, _, fmt in cols)
                       + "</tr>" for step in curve)
        return f'<h3>Pruning curve</h3><div class="scroll"><table><tr>{head}</tr>{rows}</table></div>'
