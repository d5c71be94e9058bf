"""The root-cause report (contract section 5): built step by step, checked against its schema."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from hawkeye_dagster.contract import CONTRACT_VERSION

#: a copy of ``shared/report.schema.json`` shipped with the package (a test keeps them equal)
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
SUSPECT_KINDS = ("models", "snapshots", "features", "lineage_nodes", "training_partitions",
                 "experiments")
VERDICTS = ("root_cause_found", "no_issue", "inconclusive")


@dataclass
class ReportBuilder:
    """Collects what each step of the decision tree found, in order, then writes the report."""

    entry: dict
    steps: list[dict] = field(default_factory=list)
    suspects: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in SUSPECT_KINDS})
    root_causes: list[dict] = field(default_factory=list)
    mitigations: list[dict] = field(default_factory=list)

    def step(self, step: str, finding: str, *, confidence: float | None = None,
             **evidence) -> None:
        """Record a step with its finding, its evidence (JSON-able values) and a confidence."""
        record = {"step": step, "finding": finding}
        if confidence is not None:
            record["confidence"] = round(float(confidence), 3)
        if evidence:
            record["evidence"] = jsonable(evidence)
        self.steps.append(record)

    def suspect(self, kind: str, ids) -> None:
        """Append suspects of one kind (``SUSPECT_KINDS``), keeping rank order and no repeats."""
        known = self.suspects[kind]
        known.extend(str(i) for i in ids if str(i) not in known)

    def root_cause(self, kind: str, id: str, confidence: float, summary: str,
                   version: str | None = None) -> None:
        cause = {"kind": kind, "id": str(id), "confidence": round(float(confidence), 3),
                 "summary": summary}
        if version is not None:
            cause["version"] = str(version)
        self.root_causes.append(cause)

    def mitigate(self, action: dict) -> None:
        if action not in self.mitigations:
            self.mitigations.append(dict(action))

    def build(self, verdict: str) -> dict:
        """The report: root causes ranked by confidence (none unless ``root_cause_found``)."""
        if verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {verdict!r}")
        causes = sorted(self.root_causes, key=lambda c: -c["confidence"])
        found = verdict == "root_cause_found"
        return {
            "contract": CONTRACT_VERSION,
            "verdict": verdict,
            "entry": jsonable(self.entry),
            "root_causes": causes if found else [],
            "suspects": {k: list(v) for k, v in self.suspects.items()},
            "mitigations": list(self.mitigations) if found else [],
            "steps": list(self.steps),
        }


@cache
def report_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_report(report: dict) -> None:
    """Raise :class:`jsonschema.ValidationError` unless ``report`` follows the contract's schema."""
    import jsonschema

    jsonschema.Draft202012Validator(report_schema()).validate(report)


def iso(ts) -> str:
    """A timestamp as ISO-8601 UTC to the minute, as reports and summaries print it."""
    return pd.Timestamp(ts).strftime("%Y-%m-%dT%H:%MZ")


def jsonable(value):
    """Plain JSON values from numpy/pandas ones: timestamps as ISO-8601 UTC, NaN as ``None``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, np.ndarray, pd.Index, pd.Series)):
        return [jsonable(v) for v in value]
    if isinstance(value, (pd.Timestamp, np.datetime64)):
        return None if pd.isna(value) else pd.Timestamp(value).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, pd.Timedelta):
        return str(value)
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(value) else round(float(value), 6)
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    return str(value)
