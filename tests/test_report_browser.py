"""The HTML report in a real headless browser (Debian's chromium, installed by scripts/install_test_browser.sh):
the page loads from disk, every image resolves, and the console stays empty."""
import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from unlearn_fast.attribution import Attribution
from unlearn_fast.data import SubsetDataset
from unlearn_fast.query import Query

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")

# Loads the report in an iframe (same folder: file access is allowed by a flag) and writes what it finds into the DOM.
CHECKER = """<!DOCTYPE html><html><body><iframe id="report" src="report.html"></iframe><script>
window.addEventListener("load", () => {
  const doc = document.getElementById("report").contentDocument;
  const images = [...doc.images];
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src"));
  document.body.setAttribute("data-result", JSON.stringify({images: images.length, broken: broken,
                                                            title: doc.title, figures: doc.querySelectorAll("figure").length}));
});
</script></body></html>"""


def open_in_browser(report_dir: str) -> tuple[dict, list[str]]:
    """(what the page showed, console lines); the checker page is removed afterwards."""
    checker = os.path.join(report_dir, "_browser_check.html")
    with open(checker, "w") as handle:
        handle.write(CHECKER)
    try:
        run = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                              "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom",
                              "file://" + os.path.abspath(checker)], capture_output=True, text=True, timeout=120)
    finally:
        os.remove(checker)
    found = re.search(r'data-result="([^"]*)"', run.stdout)
    assert found, f"the checker page did not run (exit {run.returncode}):\n{run.stderr[-2000:]}"
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(html.unescape(found.group(1))), console


@pytest.fixture()
def report_dir(default_dataset, tmp_path):
    from unlearn_fast.data import load_pixels

    dataset = SubsetDataset(default_dataset, range(100, 130))
    scores = np.random.default_rng(0).standard_normal((2, 30)).astype(np.float32)
    queries = [Query(image=load_pixels(default_dataset, 32, [i])[0], prompt=p, source="test")
               for i, p in ((105, "a <b>bold</b> & odd prompt"), (120, "second query"))]
    records = [{"folder": f"queries/{q}", "unlearn": {"alpha": 0.1, "steps": 1}} for q in range(2)]
    Attribution(scores=scores, queries=queries, records=records, dataset=dataset, work_dir=str(tmp_path)).save(
        str(tmp_path / "report"), top_k=6)
    return str(tmp_path / "report")


@pytest.fixture(autouse=True)
def browser():
    """A missing browser fails (it is part of the test set-up), unless UNLEARN_FAST_SKIP_BROWSER=1 says to skip."""
    if BROWSER is None:
        if os.environ.get("UNLEARN_FAST_SKIP_BROWSER") == "1":
            pytest.skip("no chromium (UNLEARN_FAST_SKIP_BROWSER=1)")
        pytest.fail("no chromium on the PATH: run scripts/install_test_browser.sh (the README's test command does), "
                    "or set UNLEARN_FAST_SKIP_BROWSER=1 to skip the browser tests")


def test_report_loads_with_every_image_and_no_console_errors(report_dir):
    result, console = open_in_browser(report_dir)
    assert result["title"] == "unlearn-fast attribution"
    assert result["figures"] == 2 * 6 and result["images"] == 2 * 6 + 2
    assert result["broken"] == [] and console == []


def test_the_browser_check_sees_a_missing_image(report_dir):
    """The check above can fail: delete one thumbnail and it is reported."""
    victim = sorted(os.listdir(os.path.join(report_dir, "images")))[-1]
    os.remove(os.path.join(report_dir, "images", victim))
    result, _ = open_in_browser(report_dir)
    assert result["broken"] == [f"images/{victim}"]
