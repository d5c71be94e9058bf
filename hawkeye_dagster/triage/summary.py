"""The root-cause report for people: a plain-text summary (CLI) and markdown (Dagster UI)."""

from __future__ import annotations

from pathlib import Path

from hawkeye_dagster.triage.report import SUSPECT_KINDS

_VERDICTS = {"root_cause_found": "root cause found", "no_issue": "no issue",
             "inconclusive": "inconclusive"}


def describe_entry(entry: dict, with_window: bool = True) -> str:
    """One line: what the triage started from, and over which window (unless not wanted)."""
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
            what += " -> " + describe_entry(selected, with_window=False)
    window = entry.get("window") or {}
    if with_window and window.get("start") and window.get("end"):
        what += f" (window {window['start']} .. {window['end']})"
    return what


def describe_mitigation(action: dict) -> str:
    if action["action"] == "pause_pipeline":
        return f"pause pipeline {action['pipeline_id']}"
    if action["action"] == "rollback_snapshot":
        return f"roll {action['model_id']} back to snapshot {action['to_snapshot_id']}"
    where = "input feature" if action["guard"] == "clip" else "graph node"
    return f"add a {action['guard']} guard at {where} {action['node']!r} of {action['model_id']}"


def format_report(report: dict, printed: dict[tuple, str] | None = None) -> str:
    """A readable summary of a report: verdict, ranked root causes, mitigations, suspects, steps.

    Long root-cause summaries are printed once: a step whose finding a cause's summary holds
    refers to that cause, and ``printed`` (root cause -> the entry whose summary described it,
    filled in by each call) lets a run over many reports refer back to an earlier report.
    """
    lines = [f"Verdict: {_VERDICTS[report['verdict']]}",
             f"Entry:   {describe_entry(report['entry'])}", ""]
    summaries = [cause["summary"] for cause in report["root_causes"]]
    if report["root_causes"]:
        lines.append("Root causes (most likely first):")
        for i, cause in enumerate(report["root_causes"], 1):
            version = f" version {cause['version']}" if cause.get("version") else ""
            lines.append(f"  {i}. {cause['kind']} {cause['id']}{version} "
                         f"(confidence {cause['confidence']:.2f}{_share(cause, ', ')})")
            where = (printed or {}).get(_cause_key(cause))
            lines.append("     " + (cause["summary"] if where is None
                                    else f"as for the {where} above"))
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
        cause = next((n for n, summary in enumerate(summaries, 1)
                      if step["finding"] and step["finding"] in summary), None)
        finding = step["finding"] if cause is None else f"see root cause {cause}"
        lines.append(f"  {i}. {step['step']}: {finding}{confidence}")
    if printed is not None:
        entry = describe_entry(report["entry"], with_window=False)
        for cause in report["root_causes"]:
            printed.setdefault(_cause_key(cause), entry)
    return "\n".join(lines)


def _cause_key(cause: dict) -> tuple:
    """A root cause's identity across reports (its summary's figures vary with the window)."""
    return cause["kind"], cause["id"], cause.get("version")


def format_incidents(triaged: list[tuple[dict, Path]]) -> str:
    """The closing table of a run over many incidents: per report its entry, verdict, top root
    cause and confidence, then where each report was written."""
    rows = [("#", "entry", "verdict", "top cause", "confidence", "explains")]
    for n, (report, _) in enumerate(triaged, 1):
        top = report["root_causes"][0] if report["root_causes"] else None
        rows.append((str(n), describe_entry(report["entry"], with_window=False),
                     _VERDICTS[report["verdict"]],
                     f"{top['kind']} {top['id']}" if top else "-",
                     f"{top['confidence']:.2f}" if top else "-",
                     (_share(top) or "-") if top else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"Incidents triaged: {len(triaged)}"]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
              for row in rows]
    lines += ["", "Reports (JSON; plots in the folder of the same name):"]
    lines += [f"  {n}. {path}" for n, (_, path) in enumerate(triaged, 1)]
    return "\n".join(lines)


def report_markdown(report: dict, images: dict[str, str] | None = None) -> str:
    """The report as markdown for the Dagster UI; ``images`` maps a heading to embedded markdown
    images (e.g. ``![..](data:image/png;base64,..)``) shown after the steps."""
    out = [f"## {_VERDICTS[report['verdict']].capitalize()}",
           f"**Entry:** {describe_entry(report['entry'])}", ""]
    if report["root_causes"]:
        out += ["### Root causes", "| # | kind | id | confidence | explains | summary |",
                "|---|---|---|---|---|---|"]
        for i, c in enumerate(report["root_causes"], 1):
            what = f"`{c['id']}`" + (f" {c['version']}" if c.get("version") else "")
            out.append(f"| {i} | {c['kind']} | {_cell(what)} | {c['confidence']:.2f} | "
                       f"{_share(c) or '-'} | {_cell(c['summary'])} |")
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


def _share(cause: dict, prefix: str = "") -> str:
    """``explains 87% (80%-93%)``: a root cause's explained share with its interval, or ''."""
    if cause.get("explained_share") is None:
        return ""
    low, high = (cause.get("counterfactual") or {}).get("interval") or (None, None)
    interval = f" ({low:.0%}-{high:.0%})" if low is not None else ""
    return f"{prefix}explains {cause['explained_share']:.0%}{interval}"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")
