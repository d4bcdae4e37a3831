"""Scan folders come from strangers: `report`, `mitigate` and `scan --resume` on tampered,
truncated, mistyped, NaN-filled or oversized files each exit 2 with one line, and write nothing
outside the folder; paths in them never reach files outside it; one run per folder at a time."""
from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from cli_helpers import assert_bad_input, invoke, scans_interrupted_after, train_tiny, write_npz
from neuralcleanse.cli import EXIT_CLEAN, EXIT_INFECTED
from neuralcleanse.detection.scan_state import MAGIC, read_records, write_records

SCAN_ARGS = ("--samples", "200", "--block-size", "1")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """A real finished scan with a mitigation beside it, and a real interrupted scan."""
    work = tmp_path_factory.mktemp("pristine")
    npz = write_npz(work / "data.npz")
    model = train_tiny(npz, work / "m.pt")
    finished = work / "finished"
    scanned = invoke("scan", str(model), "--data", str(npz), "--out", str(finished), *SCAN_ARGS)
    assert scanned.exit_code in (EXIT_CLEAN, EXIT_INFECTED), scanned.output
    mitigated = invoke("mitigate", str(model), "--scan", str(finished), "--data", str(npz), "--method", "filter",
                       "--labels", "1", "--out", str(finished / "filter"))
    assert mitigated.exit_code == 0, mitigated.output
    interrupted = work / "interrupted"
    with scans_interrupted_after(2):
        stopped = invoke("scan", str(model), "--data", str(npz), "--out", str(interrupted), *SCAN_ARGS)
    assert stopped.exit_code == 130 and (interrupted / ".scan-state.pt").is_file()
    return {"model": model, "npz": npz, "finished": finished, "interrupted": interrupted, "work": work}


# ---- mutations -------------------------------------------------------------------------------------

def _json_edit(rel: str, edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        path = folder / rel
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data, allow_nan=True))
    return mutate


def _set(rel: str, key: str, value) -> Callable[[Path], None]:
    def edit(d: dict) -> None:
        target = d
        *parents, last = key.split(".")
        for p in parents:
            target = target[p]
        target[last] = value
    return _json_edit(rel, edit)


def _raw(rel: str, make: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        path = folder / rel
        path.write_bytes(make(path.read_bytes()))
    return mutate


def _npz_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        path = folder / "triggers.npz"
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        edit(arrays)
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    return mutate


def _npz_huge_header(folder: Path) -> None:
    """A masks array that declares 10^14 floats (and holds none): must be refused from its header."""
    path = folder / "triggers.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (len(arrays["labels"]), 10**7, 10**7)})
    with zipfile.ZipFile(path, "w") as zf:
        for k in ("labels", "patterns"):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arrays[k])
            zf.writestr(f"{k}.npy", buf.getvalue())
        zf.writestr("masks.npy", b"\x93NUMPY\x02\x00" + header.getvalue()[8:])


def _object_masks(folder: Path) -> None:
    path = folder / "triggers.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["masks"] = np.array([object()] * len(arrays["labels"]), dtype=object)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _state_edit(edit: Callable[[list], None]) -> Callable[[Path], None]:
    """Edits the saved state's journal records (0: the header, 1: the first finished label) but keeps
    its fingerprint and checksums, so only the checks on its contents can refuse it."""
    def mutate(folder: Path) -> None:
        path = folder / ".scan-state.pt"
        records, _ = read_records(path)
        edit(records)
        write_records(path, records)
    return mutate


class _Pickled:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/neuralcleanse-pwned",))


def _pickled_state(folder: Path) -> None:
    """A well-formed journal (magic, length, checksum) whose header would run code if unpickled."""
    write_records(folder / ".scan-state.pt", [{"format": "neuralcleanse-scan-state", "payload": _Pickled()}])


def _plain_pickle_state(folder: Path) -> None:
    torch.save({"format": "neuralcleanse-scan-state", "payload": _Pickled()}, folder / ".scan-state.pt")


REPORT, MITIGATION = "report.json", "filter/mitigation.json"

# (name, which pristine folder, mutation)
MUTATIONS: list[tuple[str, str, Callable[[Path], None]]] = [
    ("report.json truncated", "finished", _raw(REPORT, lambda b: b[: len(b) // 2])),
    ("report.json empty", "finished", _raw(REPORT, lambda b: b"")),
    ("report.json not UTF-8", "finished", _raw(REPORT, lambda b: b"\xff\xfe" + b)),
    ("report.json a list", "finished", _raw(REPORT, lambda b: b"[1, 2, 3]")),
    ("report.json nested 100,000 deep", "finished", _raw(REPORT, lambda b: b"[" * 100_000 + b"]" * 100_000)),
    ("report.json over 64 MiB", "finished", _raw(REPORT, lambda b: b[:-2] + b" " * (65 * 2**20) + b[-2:])),
    ("labels a string", "finished", _set(REPORT, "labels", "0,1,2,3")),
    ("labels hold a string", "finished", _json_edit(REPORT, lambda d: d["labels"].__setitem__(0, "0"))),
    ("labels hold a boolean", "finished", _json_edit(REPORT, lambda d: d["labels"].__setitem__(0, True))),
    ("labels repeat", "finished", _json_edit(REPORT, lambda d: d["labels"].__setitem__(1, d["labels"][0]))),
    ("labels negative", "finished", _json_edit(REPORT, lambda d: d["labels"].__setitem__(0, -1))),
    ("labels 200,000 of them", "finished", _set(REPORT, "labels", list(range(200_000)))),
    ("l1 norms NaN", "finished", _json_edit(REPORT, lambda d: d["l1_norms"].__setitem__(0, math.nan))),
    ("l1 norms infinite", "finished", _json_edit(REPORT, lambda d: d["l1_norms"].__setitem__(0, math.inf))),
    ("l1 norms 1e400", "finished", _raw(REPORT, lambda b: b.replace(b'"l1_norms": [', b'"l1_norms": [1e400, ', 1))),
    ("l1 norms a string", "finished", _json_edit(REPORT, lambda d: d["l1_norms"].__setitem__(0, "7"))),
    ("l1 norms one short", "finished", _json_edit(REPORT, lambda d: d["l1_norms"].pop())),
    ("l1 norms negative", "finished", _json_edit(REPORT, lambda d: d["l1_norms"].__setitem__(0, -3.0))),
    ("success rate above 1", "finished", _json_edit(REPORT, lambda d: d["success_rates"].__setitem__(0, 5.0))),
    ("reached_threshold not booleans", "finished", _json_edit(REPORT, lambda d: d["reached_threshold"].__setitem__(0, 1))),
    ("steps negative", "finished", _json_edit(REPORT, lambda d: d["steps"].__setitem__(0, -5))),
    ("flagged names an unscanned label", "finished", _set(REPORT, "flagged", [99])),
    ("flagged edited against the norms", "finished",
     _json_edit(REPORT, lambda d: d.__setitem__("flagged", [l for l in d["labels"] if l not in d["flagged"]][:1]))),
    ("threshold zero", "finished", _set(REPORT, "threshold", 0)),
    ("threshold a string", "finished", _set(REPORT, "threshold", "2")),
    ("infected a string", "finished", _set(REPORT, "infected", "yes")),
    ("images a list", "finished", _set(REPORT, "images", ["x"])),
    ("settings a number", "finished", _set(REPORT, "settings", 3)),
    ("chart a number", "finished", _set(REPORT, "chart", 7)),
    ("triggers.npz truncated", "finished", _raw("triggers.npz", lambda b: b[: len(b) // 2])),
    ("triggers.npz empty", "finished", _raw("triggers.npz", lambda b: b"")),
    ("triggers.npz without masks", "finished", _npz_edit(lambda a: a.pop("masks"))),
    ("masks of the wrong rank", "finished", _npz_edit(lambda a: a.__setitem__("masks", a["masks"][:, 0]))),
    ("masks NaN", "finished", _npz_edit(lambda a: a["masks"].__setitem__((0, 0, 0), np.nan))),
    ("masks above 1", "finished", _npz_edit(lambda a: a["masks"].__setitem__((0, 0, 0), 7.0))),
    ("masks of integers", "finished", _npz_edit(lambda a: a.__setitem__("masks", a["masks"].astype(np.int64)))),
    ("masks of Python objects", "finished", _object_masks),
    ("masks declaring 10^14 values", "finished", _npz_huge_header),
    ("patterns with 2 channels", "finished",
     _npz_edit(lambda a: a.__setitem__("patterns", np.concatenate([a["patterns"]] * 2, axis=1)))),
    ("trigger labels differ from report.json", "finished", _npz_edit(lambda a: a.__setitem__("labels", a["labels"][::-1]))),
    ("one trigger missing", "finished", _npz_edit(lambda a: [a.__setitem__(k, a[k][:-1]) for k in list(a)])),
    ("mitigation.json truncated", "finished", _raw(MITIGATION, lambda b: b[: len(b) // 2])),
    ("mitigation method unknown", "finished", _set(MITIGATION, "method", "<script>")),
    ("mitigation accuracy a string", "finished", _set(MITIGATION, "before.clean_accuracy", "99%")),
    ("mitigation attack success 5", "finished",
     _json_edit(MITIGATION, lambda d: d["after"]["attack_success"][0].__setitem__("rate", 5))),
    ("mitigation files a list", "finished", _set(MITIGATION, "files", ["../../etc/passwd"])),
    ("mitigation baselines a string", "finished", _set(MITIGATION, "baselines", "none")),
    ("scan state cut inside its header", "interrupted", _raw(".scan-state.pt", lambda b: b[: len(MAGIC) + 20])),
    ("scan state garbage", "interrupted", _raw(".scan-state.pt", lambda b: os.urandom(256))),
    ("scan state a pickle that runs code", "interrupted", _pickled_state),
    ("scan state a plain pickle that runs code", "interrupted", _plain_pickle_state),
    ("scan state of another format", "interrupted", _state_edit(lambda r: r[0].__setitem__("format", "other"))),
    ("scan state tensor reshaped", "interrupted",
     _state_edit(lambda r: r[1]["state"].__setitem__("mask_p", r[1]["state"]["mask_p"][..., :1]))),
    ("scan state tensor NaN", "interrupted", _state_edit(lambda r: r[1]["state"]["mask_p"].fill_(math.nan))),
    ("scan state cost negative", "interrupted", _state_edit(lambda r: r[1]["state"]["cost"].fill_(-1.0))),
    ("scan state best mask above 1", "interrupted", _state_edit(lambda r: r[1]["state"]["best_mask"].fill_(3.0))),
    ("scan state tensor of another type", "interrupted",
     _state_edit(lambda r: r[1]["state"].__setitem__("steps", r[1]["state"]["steps"].float()))),
    ("scan state key missing", "interrupted", _state_edit(lambda r: r[1]["state"].pop("cost"))),
    ("scan state record of an unknown label", "interrupted", _state_edit(lambda r: r[1].__setitem__("label", 999))),
    ("scan state stream indices out of range", "interrupted", _state_edit(lambda r: r[1]["stream"][1].fill_(10**9))),
    ("scan state random state damaged", "interrupted",
     _state_edit(lambda r: r[1].__setitem__("stream", (torch.zeros(3, dtype=torch.uint8), r[1]["stream"][1])))),
    ("scan state block size a string", "interrupted", _state_edit(lambda r: r[0].__setitem__("block_size", "8"))),
    ("scan state pass count negative", "interrupted", _state_edit(lambda r: r[1].__setitem__("passes", -1))),
]


def _outside(root: Path, out: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` but not under `out`, with its size and modification time."""
    seen = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_relative_to(out):
            st = path.stat()
            seen[str(path)] = (st.st_size, st.st_mtime_ns)
    return seen


def test_enough_mutations() -> None:
    assert len(MUTATIONS) >= 30 and len({name for name, _, _ in MUTATIONS}) == len(MUTATIONS)


@pytest.mark.slow
@pytest.mark.slow
@pytest.mark.parametrize("name, kind, mutate", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_tampered_folder_is_refused_with_one_line(pristine, tmp_path, name, kind, mutate) -> None:
    sandbox = tmp_path / "sandbox"
    out = sandbox / "out"
    shutil.copytree(pristine[kind], out)
    mutate(out)
    before = _outside(sandbox, out)
    model, npz = str(pristine["model"]), str(pristine["npz"])
    commands = {
        "report": ["report", str(out)],
        "mitigate": ["mitigate", model, "--scan", str(out), "--data", npz, "--method", "filter", "--labels", "1",
                     "--out", str(out / "again")],
        "scan --resume": ["scan", model, "--data", npz, "--out", str(out), "--resume", *SCAN_ARGS],
    }
    for command, args in commands.items():
        result = invoke(*args)
        try:
            assert_bad_input(result)
        except AssertionError as exc:
            raise AssertionError(f"{name}: `{command}` gave exit {result.exit_code}: {result.output[-600:]}") from exc
        assert _outside(sandbox, out) == before, (name, command)
    assert not Path("/tmp/neuralcleanse-pwned").exists()


def test_untampered_folders_pass(pristine, tmp_path) -> None:
    """The same commands on the pristine copies succeed, so the refusals above are about the damage."""
    model, npz = str(pristine["model"]), str(pristine["npz"])
    for kind in ("finished", "interrupted"):
        out = tmp_path / kind
        shutil.copytree(pristine[kind], out)
        result = invoke("scan", model, "--data", npz, "--out", str(out), "--resume", *SCAN_ARGS)
        assert result.exit_code in (EXIT_CLEAN, EXIT_INFECTED), result.output
    assert invoke("report", str(tmp_path / "finished")).exit_code == 0


# ---- containment ------------------------------------------------------------------------------------

SECRET = b"\x89PNG\r\n\x1a\nTOP-SECRET-PIXELS"  # looks like a PNG, so only containment can stop it


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink-file", "symlink-folder", "etc-passwd"])
def test_report_embeds_nothing_from_outside_the_folder(pristine, tmp_path, kind, caplog) -> None:
    out = tmp_path / "shared" / "scan"
    shutil.copytree(pristine["finished"], out)
    secret = tmp_path / "secret.png"
    secret.write_bytes(SECRET)
    names = {"absolute": str(secret), "dotdot": "../../secret.png", "symlink-file": "link.png",
             "symlink-folder": "linked/secret.png", "etc-passwd": "/etc/passwd"}
    if kind == "symlink-file":
        (out / "link.png").symlink_to(secret)
    if kind == "symlink-folder":
        (out / "linked").symlink_to(tmp_path, target_is_directory=True)
    report = json.loads((out / "report.json").read_text())
    report["chart"] = names[kind]
    first = str(report["labels"][0])
    report["images"][first]["mask"] = names[kind]
    (out / "report.json").write_text(json.dumps(report))
    mitigation = json.loads((out / "filter" / "mitigation.json").read_text())
    mitigation["files"]["chart"] = "../" + names[kind] if kind == "dotdot" else names[kind]
    (out / "filter" / "mitigation.json").write_text(json.dumps(mitigation))
    result = invoke("report", str(out))
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    leaked = [base64.b64encode(SECRET).decode(), base64.b64encode(b"root:x:0:0").decode()[:12]]
    assert not any(s in page for s in leaked)
    assert "lies outside the run folder" in page
    assert any("outside" in r.getMessage() for r in caplog.records) or "outside" in result.stderr
    # The genuine images still show.
    assert page.count("data:image/png;base64,") >= 3 * len(report["labels"]) - 1


def test_a_subfolder_linking_outside_is_not_read(pristine, tmp_path) -> None:
    out = tmp_path / "scan"
    shutil.copytree(pristine["finished"], out)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(out / "filter", elsewhere)
    mitigation = json.loads((elsewhere / "mitigation.json").read_text())
    mitigation["method"] = "prune-from-elsewhere"  # would be refused if read
    (elsewhere / "mitigation.json").write_text(json.dumps(mitigation))
    (out / "linked").symlink_to(elsewhere, target_is_directory=True)
    assert invoke("report", str(out)).exit_code == 0


def test_non_image_inside_the_folder_is_not_embedded(pristine, tmp_path) -> None:
    out = tmp_path / "scan"
    shutil.copytree(pristine["finished"], out)
    report = json.loads((out / "report.json").read_text())
    report["chart"] = "report.json"
    (out / "report.json").write_text(json.dumps(report))
    assert invoke("report", str(out)).exit_code == 0
    page = (out / "report.html").read_text()
    assert "not an image: report.json" in page


# ---- one run per folder -------------------------------------------------------------------------------

@pytest.mark.slow
def test_second_run_on_a_busy_folder_is_refused(pristine, tmp_path) -> None:
    """Another process holds the folder (as a running scan does): a scan with --force and a
    mitigation into it are refused at once, and the finished scan in it is untouched."""
    out = tmp_path / "scan"
    shutil.copytree(pristine["finished"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from neuralcleanse.files import run_folder_lock\n"
         "with run_folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        model, npz = str(pristine["model"]), str(pristine["npz"])
        assert_bad_input(invoke("scan", model, "--data", npz, "--out", str(out), "--force", *SCAN_ARGS),
                         "in use by another neuralcleanse run")
        assert_bad_input(invoke("scan", model, "--data", npz, "--out", str(out), "--resume", *SCAN_ARGS),
                         "in use by another neuralcleanse run")
        assert_bad_input(invoke("mitigate", model, "--scan", str(pristine["finished"]), "--data", npz, "--method",
                                "filter", "--labels", "1", "--out", str(out)), "in use by another neuralcleanse run")
    finally:
        holder.kill()
        holder.wait()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name in before} == before
    # Released with the process that held it, however it ended.
    again = invoke("scan", str(pristine["model"]), "--data", str(pristine["npz"]), "--out", str(out), "--force",
                   *SCAN_ARGS)
    assert again.exit_code in (EXIT_CLEAN, EXIT_INFECTED), again.output


def test_scan_writes_nothing_through_a_link_leading_out(pristine, tmp_path) -> None:
    """A folder prepared by someone else whose triggers/ links elsewhere: the scan refuses to write there."""
    out, elsewhere = tmp_path / "scan", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "triggers").symlink_to(elsewhere, target_is_directory=True)
    result = invoke("scan", str(pristine["model"]), "--data", str(pristine["npz"]), "--out", str(out), *SCAN_ARGS)
    assert_bad_input(result, "leads outside")
    assert list(elsewhere.iterdir()) == []
