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


def open_in_browser(report_dir: str, page: str | None = None) -> tuple[dict, list[str]]:
    """(what the checker page (default CHECKER) found, console lines); the checker page is removed afterwards."""
    checker = os.path.join(report_dir, "_browser_check.html")
    with open(checker, "w") as handle:
        handle.write(page or CHECKER)
    try:
        run = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                              "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom",
                              "file://" + os.path.abspath(checker)], capture_output=True, text=True)
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


# Every link of the report fetched (XHR from file://, allowed by the same flag), the group table and the mask found.
LINK_CHECKER = """<!DOCTYPE html><html><body><iframe id="report" src="report.html"></iframe><script>
function get(url) { return new Promise(done => { const x = new XMLHttpRequest(); x.open("GET", url);
  x.onload = () => done(x.responseText.length > 0); x.onerror = () => done(false); x.send(); }); }
window.addEventListener("load", async () => {
  const doc = document.getElementById("report").contentDocument;
  const hrefs = [...new Set([...doc.querySelectorAll("a[href]")].map(a => a.getAttribute("href")))];
  const ok = await Promise.all(hrefs.map(h => get(h)));
  const images = [...doc.images];
  document.body.setAttribute("data-result", JSON.stringify({
    links: hrefs, dead: hrefs.filter((h, i) => !ok[i]),
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src")),
    groups: [...doc.querySelectorAll("table.groups tr")].slice(1).map(r => r.cells[1].textContent),
    masks: [...doc.querySelectorAll("img.mask")].map(i => i.naturalWidth),
    files: [...doc.querySelectorAll("a.file")].map(a => a.textContent),
    text: doc.body.innerText}));
});
</script></body></html>"""


@pytest.fixture()
def grouped_report(default_dataset, tmp_path):
    """A report of a region query over an image folder with an 'artist' field, grouped by it, with a two-stage
    method's stage and candidate count in its record, its work directory's manifest present."""
    from unlearn_fast.data import export_imagefolder, open_dataset
    from unlearn_fast.data import load_pixels

    folder = tmp_path / "data"
    export_imagefolder(SubsetDataset(default_dataset, range(100, 112)), str(folder))
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    (folder / "metadata.jsonl").write_text("".join(json.dumps({**r, "artist": f"artist {i % 3}"}) + "\n"
                                                   for i, r in enumerate(rows)))
    work = tmp_path / "work"
    work.mkdir()
    (work / "manifest.json").write_text(json.dumps({"format": 2, "inputs": {"model.unet": "u1", "model.vae": "v1"},
                                                    "settings": {"scoring": {"timesteps": 4, "flips": True,
                                                                             "dtype": "fp32", "seed": 0},
                                                                 "fisher": {"damping": 1e-8, "samples_per_example": 1,
                                                                            "seed": 0},
                                                                 "fisher_group": "kv", "fisher_examples": 1024}}))
    mask = np.zeros((32, 32))
    mask[:, :16] = 1
    query = Query(image=load_pixels(default_dataset, 32, [105])[0], prompt="left half", source="test")
    query = query.with_mask(mask, "left.png")
    records = [{"folder": "queries/x", "unlearn": {"alpha": 0.1}, "mask": "left.png", "stage": "exact re-rank",
                "candidates": 8, "model": "default"}]
    scores = np.random.default_rng(1).standard_normal((1, 12)).astype(np.float32)
    Attribution(scores=scores, queries=[query], records=records, dataset=open_dataset(str(folder)),
                work_dir=str(work), group_by="artist").save(str(tmp_path / "report"), top_k=4)
    return str(tmp_path / "report")


def test_report_links_resolve_and_show_groups_mask_and_settings(grouped_report):
    result, console = open_in_browser(grouped_report, LINK_CHECKER)
    assert result["dead"] == [] and result["broken"] == [] and console == []
    assert "ranking.csv" in result["links"] and "groups.csv" in result["links"]
    assert sum(link.startswith("images/full/") for link in result["links"]) == 4  # each top image at full size
    assert sorted(result["groups"]) == ["artist 0", "artist 1", "artist 2"] and result["masks"] == [32]
    assert len(result["files"]) == 4 and all(name.endswith(".png") for name in result["files"])
    text = result["text"]
    for shown in ("timesteps 4", "flips on", "Fisher rows 1024", "model id", "default", "exact re-rank",
                  "candidates", "Groups by artist"):
        assert shown in text, shown


def test_the_link_check_sees_a_dead_link(grouped_report):
    """The check above can fail: remove ranking.csv and its link is reported dead."""
    os.remove(os.path.join(grouped_report, "ranking.csv"))
    result, _ = open_in_browser(grouped_report, LINK_CHECKER)
    assert result["dead"] == ["ranking.csv"]


# The comparison page and the index page: every link fetched, every image loaded, every method column's head read.
PAGE_CHECKER = """<!DOCTYPE html><html><body><iframe id="report" src="PAGE"></iframe><script>
function get(url) { return new Promise(done => { const x = new XMLHttpRequest(); x.open("GET", url);
  x.onload = () => done(x.responseText.length > 0); x.onerror = () => done(false); x.send(); }); }
window.addEventListener("load", async () => {
  const doc = document.getElementById("report").contentDocument;
  const base = "PAGE".includes("/") ? "PAGE".slice(0, "PAGE".lastIndexOf("/") + 1) : "";
  const hrefs = [...new Set([...doc.querySelectorAll("a[href]")].map(a => a.getAttribute("href")))];
  const ok = await Promise.all(hrefs.map(h => get(base + h)));
  const images = [...doc.images];
  document.body.setAttribute("data-result", JSON.stringify({
    links: hrefs, dead: hrefs.filter((h, i) => !ok[i]),
    images: images.length, broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src")),
    heads: [...doc.querySelectorAll("th.method")].map(th => [th.dataset.method, th.firstChild.textContent.trim(),
                                                            th.querySelector("small").textContent.trim()]),
    rows: doc.querySelectorAll("table.index tr").length - 1, title: doc.title}));
});
</script></body></html>"""


@pytest.fixture()
def compared(default_dataset, tmp_path):
    """A work directory's attributions folder holding a two-query comparison of three methods and a plain answer,
    written and indexed as the Attributor writes them."""
    from unlearn_fast.comparison import Comparison
    from unlearn_fast.data import load_pixels
    from unlearn_fast.outputs import output_id, record_output

    dataset = SubsetDataset(default_dataset, range(100, 130))
    queries = [Query(image=load_pixels(default_dataset, 32, [i])[0], prompt=p, source="test")
               for i, p in ((105, "a <b>bold</b> & odd prompt"), (120, "second query"))]
    labels = {"abu": "AbU (attribution by unlearning)", "dtrak": "D-TRAK", "pixel": "Pixel similarity"}
    rng = np.random.default_rng(2)
    attributions = {name: Attribution(
        scores=rng.standard_normal((2, 30)).astype(np.float32), queries=queries, dataset=dataset,
        work_dir=str(tmp_path), records=[{"folder": f"methods/{name}", "query": f"q{q}", "prompt": queries[q].prompt,
                                          "source": "test", "method": name, "method_title": title,
                                          "score_meaning": f"what {name} measures"} for q in range(2)])
        for name, title in labels.items()}
    comparison = Comparison(attributions)
    root = tmp_path / "attributions"
    folder = root / output_id(comparison.records, comparison.methods)
    comparison.save(str(folder), top_k=5)
    record_output(str(tmp_path), str(folder), comparison)
    plain = attributions["abu"]
    folder = root / output_id(plain.records)
    plain.save(str(folder), top_k=5)
    record_output(str(tmp_path), str(folder), plain)
    return root, labels, comparison


def checked(root, page: str) -> tuple[dict, list[str]]:
    return open_in_browser(str(root), PAGE_CHECKER.replace("PAGE", page))


def test_comparison_page_labels_every_method_column_and_every_link_resolves(compared):
    root, labels, comparison = compared
    folder = next(p.name for p in root.iterdir() if p.name.startswith("compare-"))
    result, console = checked(root, f"{folder}/comparison.html")
    assert result["dead"] == [] and result["broken"] == [] and console == []
    assert result["heads"] == [[name, title, f"what {name} measures"] for name, title in labels.items()] * 2
    for name in labels:  # each method's own report and ranking, linked from the page
        assert f"{name}/report.html" in result["links"] and f"{name}/ranking.csv" in result["links"]
    assert "comparison.csv" in result["links"]
    assert result["images"] == 2 + 2 * 5 * len(labels)  # each query, and a cell per rank and method


def test_index_page_lists_every_query_and_its_links_resolve(compared):
    root, _, _ = compared
    result, console = checked(root, "index.html")
    assert result["dead"] == [] and result["broken"] == [] and console == []
    assert result["rows"] == 4 and result["images"] == 4  # two outputs of two queries each, a thumbnail each
    assert sum(link.endswith("/comparison.html") for link in result["links"]) == 1
    assert sum(link.endswith("/report.html") for link in result["links"]) == 1


def test_the_page_check_sees_a_dead_method_link(compared):
    """The checks above can fail: remove one method's folder and its links are reported dead."""
    import shutil

    root, _, _ = compared
    folder = next(p for p in root.iterdir() if p.name.startswith("compare-"))
    shutil.rmtree(folder / "pixel")
    result, _ = checked(root, f"{folder.name}/comparison.html")
    assert sorted(result["dead"]) == ["pixel/ranking.csv", "pixel/report.html"]
