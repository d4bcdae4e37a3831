#!/usr/bin/env python3
"""Writes a scan folder's report.html and renders it to a PNG with headless Chromium.

    .venv/bin/python scripts/screenshot_report.py runs/scan docs/report-screenshot.png

Needs Chromium (Debian: `apt-get install -y chromium`, binary /usr/bin/chromium). The page itself
loads nothing from the network; the flags below also keep Chromium's own background traffic off.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuralcleanse.errors import InputError  # noqa: E402
from neuralcleanse.report.html_report import write_html_report  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio"]


def find_chromium(given: str | None) -> str:
    for name in ([given] if given else ["/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"]):
        path = shutil.which(name) or (name if Path(name).is_file() else None)
        if path:
            return path
    raise SystemExit("error: Chromium not found; install it (Debian: apt-get install -y chromium) or pass --chromium")


def screenshot(html: Path, png: Path, chromium: str, width: int, height: int, timeout: float) -> None:
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nc-chromium-") as profile:
        cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               "--virtual-time-budget=5000", f"--screenshot={png.resolve()}", html.resolve().as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"error: Chromium did not finish in {timeout:g} s") from None
    if proc.returncode != 0 or not png.is_file():
        raise SystemExit(f"error: Chromium failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a finished scan's --out folder (or a mitigation's)")
    ap.add_argument("output", type=Path, help="PNG to write")
    ap.add_argument("--width", type=int, default=1200, help="window width in CSS pixels (default 1200)")
    ap.add_argument("--height", type=int, default=2000, help="window height; the shot is cut there (default 2000)")
    ap.add_argument("--chromium", help="Chromium binary (default: /usr/bin/chromium or one on PATH)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds to wait for Chromium (default 120)")
    args = ap.parse_args(argv)
    try:
        html = write_html_report(args.run_dir)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chromium = find_chromium(args.chromium)
    screenshot(html, args.output, chromium, args.width, args.height, args.timeout)
    print(f"page: {html}\nscreenshot: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
