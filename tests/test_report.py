"""The report builder, its schema, and the readable summaries."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest

from hawkeye_dagster.triage.report import SCHEMA_PATH, ReportBuilder, jsonable, validate_report
from hawkeye_dagster.triage.summary import format_report, report_markdown

SHARED_SCHEMA = Path(__file__).resolve().parents[1].parent / "shared" / "report.schema.json"


def full_report() -> dict:
    b = ReportBuilder(entry={"kind": "topline", "product": "feed", "segment": "us",
                             "window": {"start": pd.Timestamp("2026-10-01", tz="UTC"),
                                        "end": pd.Timestamp("2026-10-08", tz="UTC")}})
    b.step("topline", "engagement fell by 5%", confidence=0.97, onset=pd.Timestamp(
        "2026-10-05T06:00", tz="UTC"), shift_z=np.float64(4.2), missing=np.nan)
    b.suspect("models", ["m1", "m2"])
    b.suspect("models", ["m1"])
    b.suspect("lineage_nodes", pd.Series(["raw.clicks", "tbl | events"]))
    b.root_cause("lineage_node", "raw.clicks", 0.4, "null fraction rose")
    b.root_cause("lineage_change", "xf.ctr", np.float64(0.91), "code change", version="3.1.0")
    b.mitigate({"action": "pause_pipeline", "pipeline_id": "clicks_ingest"})
    b.mitigate({"action": "pause_pipeline", "pipeline_id": "clicks_ingest"})
    b.mitigate({"action": "rollback_snapshot", "model_id": "m1", "to_snapshot_id": "m1-s2"})
    b.mitigate({"action": "add_guard", "model_id": "m1", "node": "clicks 7d", "guard": "clip"})
    return b.build("root_cause_found")


def test_packaged_schema_is_the_contracts():
    if not SHARED_SCHEMA.exists():
        pytest.skip("no ../shared beside the project")
    assert json.loads(SCHEMA_PATH.read_text()) == json.loads(SHARED_SCHEMA.read_text())


def test_built_report_conforms_ranks_and_deduplicates():
    report = full_report()
    validate_report(report)
    json.dumps(report)  # plain JSON values only
    assert [c["id"] for c in report["root_causes"]] == ["xf.ctr", "raw.clicks"]
    assert report["suspects"]["models"] == ["m1", "m2"]
    assert len(report["mitigations"]) == 3
    assert report["entry"]["window"]["start"] == "2026-10-01T00:00:00Z"
    step = report["steps"][0]
    assert step["evidence"]["missing"] is None and step["evidence"]["shift_z"] == 4.2


@pytest.mark.parametrize("verdict", ["no_issue", "inconclusive"])
def test_no_root_cause_or_mitigation_unless_found(verdict):
    b = ReportBuilder(entry={"kind": "auto"})
    b.root_cause("snapshot", "s1", 0.2, "weak")
    b.mitigate({"action": "rollback_snapshot", "model_id": "m", "to_snapshot_id": "s0"})
    report = b.build(verdict)
    validate_report(report)
    assert report["root_causes"] == [] and report["mitigations"] == []


@pytest.mark.parametrize("breakage", [
    lambda r: r["root_causes"][0].pop("version"),
    lambda r: r["root_causes"][0].update(confidence=1.5),
    lambda r: r["mitigations"][1].pop("to_snapshot_id"),
    lambda r: r["suspects"].pop("experiments"),
    lambda r: r.update(verdict="maybe"),
])
def test_schema_refuses_broken_reports(breakage):
    report = full_report()
    breakage(report)
    with pytest.raises(jsonschema.ValidationError):
        validate_report(report)


def test_jsonable_converts_numpy_and_pandas():
    value = {"a": np.int32(3), "b": np.bool_(True), "c": [np.inf, pd.NaT],
             "d": pd.Timedelta("1h"), 1: np.array([1.5])}
    assert jsonable(value) == {"a": 3, "b": True, "c": [None, None], "d": "0 days 01:00:00",
                               "1": [1.5]}


def test_text_summary_says_what_to_do():
    text = format_report(full_report())
    assert text.startswith("Verdict: root cause found")
    assert "top-line anomaly in feed/us" in text
    assert "1. lineage_change xf.ctr version 3.1.0 (confidence 0.91)" in text
    assert "pause pipeline clicks_ingest" in text
    assert "roll m1 back to snapshot m1-s2" in text
    assert "add a clip guard at input feature 'clicks 7d' of m1" in text
    assert "1. topline: engagement fell by 5% (confidence 0.97)" in text


def test_markdown_escapes_table_cells_and_embeds_images():
    md = report_markdown(full_report(), {"Top line": "![Top line](data:image/png;base64,AAAA)"})
    assert "`tbl \\| events`" in md
    assert "### Top line\n![Top line](data:image/png;base64,AAAA)" in md
    assert md.count("| lineage_node |") == 1
