#!/usr/bin/env python3
"""Screenshot an mpcompile HTML report with headless Chromium (a visual check of table and chart).

    python tools/screenshot_report.py --zoo bert_encoder -o /tmp/report.png
    python tools/screenshot_report.py model.onnx --compare original.onnx -o /tmp/report.png
    python tools/screenshot_report.py report.html -o /tmp/report.png

``--zoo NAME`` converts a model of the zoo (``models.ZOO``) with ``mpcompile.convert`` and
reports it against its FP32 original (with ``--numerics``). Needs Debian's ``chromium``
(``apt-get install chromium``) or ``--chromium PATH``. Chromium runs headless, without sandbox,
GPU, network or extensions, on a private profile. Exit status 0 when a PNG was written.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--disable-breakpad",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--mute-audio",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--virtual-time-budget=3000",  # let the inline script run before the capture
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def find_chromium(explicit: str | None) -> str:
    for candidate in (explicit, "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)  # type: ignore[return-value]
    sys.exit("error: no chromium found; apt-get install chromium, or pass --chromium PATH")


def write_html(args: argparse.Namespace, folder: pathlib.Path) -> pathlib.Path:
    sys.path.insert(0, str(ROOT))
    from mpcompile.report import build_report, render

    if args.source and args.source.endswith((".html", ".htm")):
        return pathlib.Path(args.source).resolve()
    if args.zoo:
        import models
        from mpcompile import convert

        original = models.ZOO[args.zoo]()
        converted = convert(original).model
        audit = build_report(converted, original=original, numerics=True, shapes=args.shape, name=args.zoo)
    elif args.source:
        audit = build_report(args.source, original=args.compare, numerics=args.numerics, shapes=args.shape)
    else:
        sys.exit("error: give a model, an HTML report, or --zoo NAME")
    page = folder / "report.html"
    page.write_text(render(audit, "html"), encoding="utf-8")
    return page


def screenshot(chromium: str, page: pathlib.Path, output: pathlib.Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mpcompile-chromium-") as profile:
        command = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={output}",
            page.as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0 or not output.is_file():
        sys.exit(f"error: chromium failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    if output.read_bytes()[:8] != PNG_MAGIC:
        sys.exit(f"error: {output} is not a PNG")


# Appended to a copy of the page: click the FLOPs header twice (descending) and record the
# name in the first row, so the inline sorting script is exercised in the real browser.
_SORT_PROBE = """<script>
(function(){
  var heads = document.querySelectorAll('#nodes thead th');
  var col = -1;
  heads.forEach(function(th, i){ if (th.textContent === 'FLOPs') col = i; });
  heads[col].click(); heads[col].click();
  var first = document.querySelector('#nodes tbody tr');
  document.body.setAttribute('data-sorted-first', first.cells[2].textContent);
  document.body.setAttribute('data-sorted-dir', heads[col].getAttribute('aria-sort'));
})();
</script>"""


def check_sorting(chromium: str, page: pathlib.Path) -> str:
    """Sort the node table by FLOPs in Chromium; returns the first row's node name."""
    import re

    probe = page.with_name("sort-probe.html")
    probe.write_text(
        page.read_text(encoding="utf-8").replace("</body>", _SORT_PROBE + "</body>"), encoding="utf-8"
    )
    with tempfile.TemporaryDirectory(prefix="mpcompile-chromium-") as profile:
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", probe.as_uri()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    match = re.search(r'data-sorted-first="([^"]*)"', result.stdout)
    direction = re.search(r'data-sorted-dir="([^"]*)"', result.stdout)
    if not match or not direction or direction.group(1) != "descending":
        sys.exit("error: the table's sorting script did not run in chromium")
    return match.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", help="an .onnx model or an .html report")
    parser.add_argument("--zoo", help="report a zoo model converted by mpcompile")
    parser.add_argument("--compare", help="FP32 original of SOURCE")
    parser.add_argument("--numerics", action="store_true")
    parser.add_argument("--shape", action="append", default=[])
    parser.add_argument("-o", "--output", required=True, help="PNG to write")
    parser.add_argument("--html", help="also keep the HTML report here")
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--height", type=int, default=1800)
    parser.add_argument("--chromium")
    args = parser.parse_args()
    chromium = find_chromium(args.chromium)
    output = pathlib.Path(args.output).resolve()
    with tempfile.TemporaryDirectory(prefix="mpcompile-report-") as folder:
        page = write_html(args, pathlib.Path(folder))
        if args.html:
            shutil.copyfile(page, args.html)
        screenshot(chromium, page, output, args.width, args.height)
        first = check_sorting(chromium, page) if page.parent == pathlib.Path(folder) else None
    print(f"wrote {output} ({output.stat().st_size} bytes)")
    if first is not None:
        print(f"sorting check: by FLOPs (descending) the first node is {first}")


if __name__ == "__main__":
    main()
