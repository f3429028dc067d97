"""A report as a real browser shows it: a screenshot, and the checks a reader makes at a glance.

``python -m stability_bench.reports.screenshot REPORT/index.html [--out shot.png] [--width 1280]
[--browser PATH]``

Opens the page in headless Chromium through Playwright (``pip install playwright``; then
either ``playwright install chromium``, or a system Chromium passed as ``--browser``, e.g.
``/usr/bin/chromium`` from Debian's ``chromium`` package) in a window ``--width`` pixels wide,
writes a full-page PNG screenshot and checks, in the rendered page:

* nothing is wider than the window (no horizontal scrolling): the document's scroll width
  and the right edge of every table are within it;
* the failures section comes before the first run table, and every link in it lands on an
  element of the page (the row of the failed run or search);
* every run row's verdict is one of pass / FAIL / stale baseline / nothing checked.

Exit 0 when all hold, 1 (saying which) when one does not, 2 when no browser can be started
here (the message says what is missing). Nothing is faked: without a browser there is no
screenshot.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

VERDICTS = {"pass", "FAIL", "stale baseline", "nothing checked"}

_MEASURE = """(width) => {
  const problems = [];
  const doc = document.documentElement;
  if (doc.scrollWidth > width) problems.push(`the page is ${doc.scrollWidth} px wide, over the ${width} px window`);
  document.querySelectorAll('table').forEach((t, i) => {
    const right = t.getBoundingClientRect().right;
    if (right > width + 0.5) problems.push(`table ${i} (${t.className}) ends at ${Math.round(right)} px`);
  });
  const failures = document.getElementById('failures');
  const firstTable = document.querySelector('table.runs');
  if (failures && firstTable && (failures.compareDocumentPosition(firstTable) & Node.DOCUMENT_POSITION_FOLLOWING) === 0)
    problems.push('the failures section is not above the run tables');
  const links = failures ? [...failures.querySelectorAll('a[href^="#"]')] : [];
  links.forEach(a => { if (!document.getElementById(a.getAttribute('href').slice(1)))
    problems.push(`failure link ${a.getAttribute('href')} lands nowhere`); });
  const verdicts = [...document.querySelectorAll('table.runs tr[id]')].map(tr => tr.lastElementChild.innerText.trim());
  return {problems, links: links.length, verdicts, width: doc.scrollWidth};
}"""


class NoBrowser(RuntimeError):
    """Playwright or a Chromium it can start is missing here."""


def screenshot(page_path: str | Path, out: str | Path, width: int = 1280, browser: str | None = None) -> dict:
    """Render ``page_path`` at ``width`` px, write a full-page PNG to ``out`` and return what
    was measured: ``problems`` (empty when every check holds), ``links``, ``verdicts``."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        raise NoBrowser("Playwright is not installed: pip install playwright") from None
    url = Path(page_path).resolve().as_uri()
    with sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=browser, args=["--no-sandbox"])
        except Error as exc:
            raise NoBrowser(f"no Chromium could be started ({str(exc).splitlines()[0]}); run `playwright install "
                            f"chromium` or pass --browser /path/to/chromium") from None
        try:
            page = chromium.new_page(viewport={"width": width, "height": 900})
            page.goto(url)
            measured = page.evaluate(_MEASURE, width)
            page.screenshot(path=str(out), full_page=True)
        finally:
            chromium.close()
    bad = [v for v in measured["verdicts"] if v not in VERDICTS]
    if bad:
        measured["problems"].append(f"unexpected verdicts: {sorted(set(bad))}")
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stability_bench.reports.screenshot",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("page", help="the report's index.html")
    parser.add_argument("--out", default="report-screenshot.png", help="the PNG to write")
    parser.add_argument("--width", type=int, default=1280, help="window width in px (default 1280)")
    parser.add_argument("--browser", help="a Chromium executable (default: Playwright's own)")
    args = parser.parse_args(argv)
    try:
        measured = screenshot(args.page, args.out, args.width, args.browser)
    except NoBrowser as exc:
        print(f"screenshot: no browser here: {exc}", file=sys.stderr)
        return 2
    print(f"screenshot: {args.out} ({measured['width']} px wide in a {args.width} px window; "
          f"{len(measured['verdicts'])} run rows, {measured['links']} failure links)")
    for problem in measured["problems"]:
        print(f"screenshot: FAILED: {problem}", file=sys.stderr)
    return 1 if measured["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
