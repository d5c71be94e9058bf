"""HawkEye's triage: the decision tree from an incident's entry to ranked root causes.

:func:`run_triage` returns the contract's root-cause report (a dict);
:func:`format_report` turns it into a readable summary.
"""

from hawkeye_dagster.triage.summary import format_report
from hawkeye_dagster.triage.tree import run_triage, triage

__all__ = ["format_report", "run_triage", "triage"]
