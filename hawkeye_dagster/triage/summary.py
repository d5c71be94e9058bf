"""The root-cause report for people: a plain-text summary (CLI) and markdown (Dagster UI)."""

from __future__ import annotations

from hawkeye_dagster.triage.report import SUSPECT_KINDS

_VERDICTS = {"root_cause_found": "root cause found", "no_issue": "no issue",
             "inconclusive": "inconclusive"}


def describe_entry(entry: dict) -> str:
    """One line: what the triage started from, and over which window."""
    kind = entry["kind"]
    if kind == "topline":
        what = "top-line anomaly in " + "/".join(
            entry[k] for k in ("product", "segment") if entry.get(k))
    elif kind == "feature_alert":
        what = "feature alert on " + ", ".join(
            repr(f) for f in entry.get("features") or [entry.get("feature")])
    elif kind == "snapshot":
        what = f"new snapshot {entry['snapshot']}"
    else:
        what = "automatic incident detection"
        selected = entry.get("selected")
        if selected:
            what += " -> " + describe_entry({**selected, "window": {}})
    window = entry.get("window") or {}
    if window.get("start") and window.get("end"):
        what += f" (window {window['start']} .. {window['end']})"
    return what


def describe_mitigation(action: dict) -> str:
    if action["action"] == "pause_pipeline":
        return f"pause pipeline {action['pipeline_id']}"
    if action["action"] == "rollback_snapshot":
        return f"roll {action['model_id']} back to snapshot {action['to_snapshot_id']}"
    where = "input feature" if action["guard"] == "clip" else "graph node"
    return f"add a {action['guard']} guard at {where} {action['node']!r} of {action['model_id']}"


def format_report(report: dict) -> str:
    """A readable summary of a report: verdict, ranked root causes, mitigations, suspects, steps."""
    lines = [f"Verdict: {_VERDICTS[report['verdict']]}",
             f"Entry:   {describe_entry(report['entry'])}", ""]
    if report["root_causes"]:
        lines.append("Root causes (most likely first):")
        for i, cause in enumerate(report["root_causes"], 1):
            version = f" version {cause['version']}" if cause.get("version") else ""
            lines.append(f"  {i}. {cause['kind']} {cause['id']}{version} "
                         f"(confidence {cause['confidence']:.2f})")
            lines.append(f"     {cause['summary']}")
        lines.append("")
    if report["mitigations"]:
        lines.append("Recommended mitigations:")
        lines += [f"  - {describe_mitigation(m)}" for m in report["mitigations"]]
        lines.append("")
    suspects = [(k, v) for k, v in report["suspects"].items() if v]
    if suspects:
        lines.append("Suspects:")
        lines += [f"  {k.replace('_', ' ')}: {', '.join(map(str, v))}" for k, v in suspects]
        lines.append("")
    lines.append("Steps:")
    for i, step in enumerate(report["steps"], 1):
        confidence = (f" (confidence {step['confidence']:.2f})"
                      if step.get("confidence") is not None else "")
        lines.append(f"  {i}. {step['step']}: {step['finding']}{confidence}")
    return "\n".join(lines)


def report_markdown(report: dict, images: dict[str, str] | None = None) -> str:
    """The report as markdown for the Dagster UI; ``images`` maps a heading to embedded markdown
    images (e.g. ``![..](data:image/png;base64,..)``) shown after the steps."""
    out = [f"## {_VERDICTS[report['verdict']].capitalize()}",
           f"**Entry:** {describe_entry(report['entry'])}", ""]
    if report["root_causes"]:
        out += ["### Root causes", "| # | kind | id | confidence | summary |",
                "|---|---|---|---|---|"]
        for i, c in enumerate(report["root_causes"], 1):
            what = f"`{c['id']}`" + (f" {c['version']}" if c.get("version") else "")
            out.append(f"| {i} | {c['kind']} | {_cell(what)} | {c['confidence']:.2f} | "
                       f"{_cell(c['summary'])} |")
        out.append("")
    if report["mitigations"]:
        out += ["### Recommended mitigations"]
        out += [f"- {describe_mitigation(m)}" for m in report["mitigations"]]
        out.append("")
    out += ["### Suspects", "| kind | ranked |", "|---|---|"]
    out += [f"| {k} | {_cell(', '.join(f'`{x}`' for x in report['suspects'][k])) or '-'} |"
            for k in SUSPECT_KINDS]
    out += ["", "### Steps", "| # | step | finding | confidence |", "|---|---|---|---|"]
    out += [f"| {i} | {s['step']} | {_cell(s['finding'])} | "
            f"{'' if s.get('confidence') is None else format(s['confidence'], '.2f')} |"
            for i, s in enumerate(report["steps"], 1)]
    for title, image in (images or {}).items():
        out += ["", f"### {title}", image]
    return "\n".join(out)


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")
