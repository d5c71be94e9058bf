"""The demo as a user sees it, in a real browser.

``hawkeye-dagster demo --port N`` runs on the demo lake until its sensors have triaged a first
incident and diagnosed a first snapshot. Dagster's GraphQL API then shows what the two reports
hold (pictures, and links that resolve to an existing asset, partition or run), and headless
Chromium shows the same on the rendered pages: the asset graph, the incident's partition page
with a link per step, the incident report (opened from its ``[Show Markdown]``) down to the
picture of its cause, the page of the last step's evidence, and the snapshot report with its
model graph. The screenshots go to ``tmp_path``, or to ``$SCREENSHOTS_DIR`` when set:
``SCREENSHOTS_DIR=docs/screenshots pytest tests/test_demo_browser.py`` refreshes the README's.
"""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests
from PIL import Image

import dagster_process
import headless_chromium

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
#: the demo has both reports 2 to 3 minutes after it starts on an idle 2-core machine (incidents
#: first, then the snapshots' diagnoses, two runs at a time), up to 10 where other work loads it
REPORTS_WITHIN_S = 900
GROUPS = ("telemetry", "features", "lineage", "snapshots", "training", "triage")
MATERIALIZATIONS = """query($path: [String!]!) { assetOrError(assetKey: {path: $path}) {
  ... on Asset { assetMaterializations(limit: 100) { partition runId metadataEntries { label
    ... on MarkdownMetadataEntry { mdStr } ... on UrlMetadataEntry { url }
    ... on TextMetadataEntry { text } } } } } }"""
PARTITIONS = """query($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) {
  ... on AssetNode { partitionKeys } } }"""
RUN = """query($id: ID!) { runOrError(runId: $id) { __typename } }"""
#: the first element whose own text is exactly the argument (a metadata row's action)
BY_TEXT = ("(text => [...document.querySelectorAll('*')].find(e => e.children.length === 0 "
           "&& e.textContent.trim() === text))")
#: every such element
ALL_BY_TEXT = ("(text => [...document.querySelectorAll('*')].filter(e => e.children.length === "
               "0 && e.textContent.trim() === text))")
DIALOG = "document.querySelector('[role=dialog]')"
#: the incident report's picture of its cause: the lineage path or the blamed snapshot's graph
CAUSE = 'img[alt="Lineage path"], img[alt^="Model graph of "]'



class GraphQL:
    def __init__(self, ui: str):
        self.url = f"{ui}/graphql"

    def __call__(self, query: str, **variables) -> dict:
        reply = requests.post(self.url, json={"query": query, "variables": variables},
                              timeout=30).json()
        assert "errors" not in reply, reply["errors"]
        return reply["data"]

    def materializations(self, asset: str) -> list[dict]:
        """The asset's materializations, latest first, with their metadata by label."""
        found = self(MATERIALIZATIONS, path=[asset])["assetOrError"]
        return [{**m, "metadata": {e["label"]: e for e in m["metadataEntries"]}}
                for m in found.get("assetMaterializations", [])]

    def wait_for(self, asset: str, matches, what: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := [m for m in self.materializations(asset) if matches(m)]:
                return found[0]
            time.sleep(5)
        seen = [(m["partition"], _text(m, "root_cause")) for m in self.materializations(asset)]
        raise AssertionError(f"no {asset} materialization of {what} within {timeout} s; "
                             f"there are {seen}")

    def resolves(self, url: str, ui: str) -> bool:
        """Whether a link to the UI names an existing asset (and partition) or run."""
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == ui, url
        route, _, rest = parts.path.lstrip("/").partition("/")
        if route == "runs":
            return self(RUN, id=rest)["runOrError"]["__typename"] == "Run"
        assert route == "assets", url
        path = [unquote(p) for p in rest.split("/")]
        node = self(PARTITIONS, path=path)["assetNodeOrError"]
        partition = parse_qs(parts.query).get("partition")
        return "partitionKeys" in node and (
            partition is None or partition[0] in node["partitionKeys"])


def _text(materialization: dict, label: str) -> str | None:
    entry = materialization["metadata"].get(label, {})
    return entry.get("text") or entry.get("mdStr") or entry.get("url")


def _pictures_and_links(markdown: str) -> tuple[list[str], list[str]]:
    """The alt texts of the embedded PNGs and the targets of the links of a markdown report."""
    return (re.findall(r"!\[([^\]]*)\]\(data:image/png;base64,", markdown),
            re.findall(r"(?<!!)\[[^\]]*\]\((https?://[^)\s]+)\)", markdown))


def _save(png: bytes, folder: Path, name: str) -> None:
    """A screenshot in 256 colours: a third of the bytes, no visible loss on a UI."""
    Image.open(io.BytesIO(png)).quantize(256).save(folder / name, optimize=True)


def _open_report(browser: headless_chromium.Chromium, url: str, partition: str) -> None:
    """The partition page of a report asset, then its report in the ``[Show Markdown]`` dialog,
    every picture loaded."""
    browser.open(url)
    browser.wait_for(f"!!document.body && document.body.innerText.includes({partition!r}) "
                     f"&& !!{BY_TEXT}('[Show Markdown]')", what=f"{url} showing its report")
    browser.evaluate(f"{BY_TEXT}('[Show Markdown]').click()")
    browser.wait_for(f"!!{DIALOG} && [...{DIALOG}.querySelectorAll('img')].length > 0 && "
                     f"[...{DIALOG}.querySelectorAll('img')].every(i => i.complete)",
                     what="the report's pictures")


def _shown(browser: headless_chromium.Chromium) -> tuple[dict[str, int], list[str]]:
    """The open dialog's pictures (alt text: rendered natural width) and link targets."""
    pictures = browser.evaluate(f"Object.fromEntries([...{DIALOG}.querySelectorAll('img')]"
                                ".map(i => [i.alt, i.naturalWidth]))")
    links = browser.evaluate(f"[...{DIALOG}.querySelectorAll('a[href]')].map(a => a.href)")
    return pictures, links


def test_the_demo_shows_the_asset_graph_and_both_reports_with_pictures_and_links(simulated,
                                                                                 tmp_path):
    executable = headless_chromium.binary()
    if executable is None:
        pytest.skip("needs Chromium on PATH (Debian: apt-get install chromium)")
    shots = Path(os.environ.get("SCREENSHOTS_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    lake, _ = simulated("demo")
    demo, port = dagster_process.start_demo(lake, tmp_path, REPO)
    browser = None
    try:
        dagster_process.wait_until_serving(port, demo)
        ui = f"http://localhost:{port}"                     # the links' host: the demo's own
        graphql = GraphQL(ui)
        started = time.monotonic()
        incident = graphql.wait_for("incident_report", bool, "an incident", REPORTS_WITHIN_S)
        snapshot = graphql.wait_for("snapshot_report", bool, "a snapshot",
                                    REPORTS_WITHIN_S - (time.monotonic() - started))
        print(f"\nboth reports {time.monotonic() - started:.0f} s after the webserver started")

        # what the API holds: pictures, and links that lead somewhere
        pictures, links = _pictures_and_links(_text(incident, "report"))
        assert "Lineage path" in pictures or any(p.startswith("Model graph of ") for p in pictures)
        steps = [e["url"] for label, e in incident["metadata"].items() if label.startswith("step ")]
        assert len(steps) >= 2 and set(steps) <= set(links)
        assert all(graphql.resolves(url, ui) for url in links)
        snapshot_pictures, _ = _pictures_and_links(_text(snapshot, "report"))
        assert {"model_graph.png", "activations.png"} <= set(snapshot_pictures)

        # what the browser shows
        browser = headless_chromium.Chromium(executable, tmp_path / "chromium",
                                             tmp_path / "chromium.log")
        graphql("mutation { setNuxSeen }")   # Dagster's first-visit newsletter dialog: seen
        browser.open(f"{ui}/asset-groups")
        # every group named, the graph drawn (telemetry's box beside its sidebar entry), and no
        # box still saying "N assets (fetching statuses)" instead of its materialized counts
        browser.wait_for("!!document.body && " + " && ".join(
            f"document.body.innerText.includes({g!r})" for g in GROUPS)
            + f" && {ALL_BY_TEXT}('telemetry').length >= 2"
            # (textContent: innerText leaves out the graph's boxes, drawn inside an SVG)
            + " && !document.body.textContent.includes('(fetching statuses)')",
            timeout=180, what="every group in the asset graph, with its statuses")
        _save(browser.screenshot(tmp_path / "graph.png"), shots, "asset-graph.png")

        url = f"{ui}/assets/incident_report?view=partitions&partition={incident['partition']}"
        browser.open(url)
        shown = " && ".join(f"!!document.querySelector('a[href=\"{link}\"]')" for link in steps)
        browser.wait_for(f"!!document.body && {shown}", what="a link per step on " + url)
        _save(browser.screenshot(tmp_path / "incident.png"), shots, "incident-links.png")
        _open_report(browser, url, incident["partition"])
        rendered, rendered_links = _shown(browser)
        assert sorted(rendered) == sorted(pictures) and min(rendered.values()) > 300
        assert set(rendered_links) == set(links)
        _save(browser.screenshot(tmp_path / "report.png"), shots, "incident-report.png")
        browser.evaluate(f"{DIALOG}.querySelector('{CAUSE}').scrollIntoView()")
        time.sleep(1)
        _save(browser.screenshot(tmp_path / "cause.png"), shots, "incident-report-cause.png")

        deepest = urlsplit(steps[-1])                        # the last step's evidence page
        browser.open(steps[-1])
        landmark = (parse_qs(deepest.query).get("partition")
                    or [unquote(deepest.path.rsplit("/", 1)[-1])])[0]   # or the asset, the run
        browser.wait_for(f"!!document.body && document.body.innerText.includes({landmark!r})",
                         what=f"{steps[-1]} showing {landmark}")

        url = f"{ui}/assets/snapshot_report?view=partitions&partition={snapshot['partition']}"
        _open_report(browser, url, snapshot["partition"])
        rendered, _ = _shown(browser)
        assert sorted(rendered) == sorted(snapshot_pictures)
        browser.evaluate(f"{DIALOG}.querySelector('img[alt=\"model_graph.png\"]')"
                         ".scrollIntoView()")
        time.sleep(1)
        _save(browser.screenshot(tmp_path / "snapshot.png"), shots, "snapshot-report.png")
    finally:
        if browser is not None:
            browser.close()
        dagster_process.stop(demo)
