"""An outside triage branch: did a snapshot's serving errors jump when its model degraded?

A platform that logs serving errors (timeouts, failed feature fetches, model
exceptions answered with a default score) can add them to its lake as one
more table, ``serving_errors``, beyond the contract:

=============  =========  ==================================================
column         type       meaning
=============  =========  ==================================================
``ts``         timestamp  start of the hour (any unit or zone the contract
                          allows)
``model_id``   string     the serving model
``snapshot_id`` string    the snapshot that served
``requests``   int64      requests it served in the hour
``errors``     int64      of those, how many failed or fell back to a default
=============  =========  ==================================================

The branch serves the ``model`` stage: when the tree reaches a degraded
model, it compares each snapshot's error rate after the onset with the
model's rate before it (a two-proportion z test). A snapshot whose rate rose
by at least :data:`Z_ALERT` standard errors becomes a suspect and a
``snapshot`` root-cause candidate, rated ``z / (z + Z_ALERT)`` (0.5 at the
threshold; uncalibrated, so the dispatcher reports it as rated). A lake
without the table gets no step at all, so reports are unchanged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hawkeye_dagster.contract import Column, Kind, TableSpec
from hawkeye_dagster.lake.reader import register_table
from hawkeye_dagster.triage.branch import Findings, TriageContext, Visit
from hawkeye_dagster.triage.branch import branch as triage_branch

SERVING_ERRORS = register_table(TableSpec(
    "serving_errors",
    (Column("ts", Kind.TIMESTAMP), Column("model_id", Kind.STRING),
     Column("snapshot_id", Kind.STRING), Column("requests", Kind.INT64),
     Column("errors", Kind.INT64)),
    "Serving requests and errors per hour, model and snapshot (an extension's table).",
    optional=True, key=("ts", "model_id", "snapshot_id"), time_column="ts"))
#: a rise of the error rate this many standard errors above the model's earlier rate is an alert
#: (a 4-sigma rule: about 3 in 100,000 by chance for one snapshot)
Z_ALERT = 4.0


@triage_branch("serving_errors", "model")
def branch(context: TriageContext, visit: Visit, found: Findings) -> None:
    data = context.data
    if not data.reader.has_table(SERVING_ERRORS.name):
        return
    model_id, onset = visit["model_id"], visit["onset"]
    rows = data.table(SERVING_ERRORS.name, time_range=data.span, equals={"model_id": model_id})
    rates = error_rates(rows, onset)
    if rates.empty:
        return
    alerts = rates[rates["z"] >= Z_ALERT]
    if alerts.empty:
        found.step("serving_errors", f"no snapshot of {model_id} served more errors after "
                                     f"the onset than the model did before it",
                   snapshots=rates.to_dict("records"))
        return
    top = alerts.iloc[0]
    found.suspect("snapshots", alerts["snapshot_id"])
    found.step("serving_errors",
               f"snapshot {top['snapshot_id']} of {model_id} failed {top['rate_after']:.1%} of "
               f"its requests after the onset, against {top['rate_before']:.2%} before "
               f"(z {top['z']:.1f})", snapshots=rates.to_dict("records"))
    for row in alerts.itertuples():
        found.root_cause("snapshot", row.snapshot_id, evidence=row.z / (row.z + Z_ALERT),
                         summary=f"snapshot {row.snapshot_id} of {model_id} failed "
                                 f"{row.rate_after:.1%} of its requests after the onset "
                                 f"({row.rate_before:.2%} before): serving errors")


def error_rates(rows: pd.DataFrame, onset: pd.Timestamp) -> pd.DataFrame:
    """Per snapshot: requests and errors after ``onset``, the model's rate before it, and the
    two-proportion z of the rise; most significant first."""
    before = rows[rows["ts"] < onset]
    after = rows[rows["ts"] >= onset].groupby("snapshot_id")[["requests", "errors"]].sum()
    n0, e0 = int(before["requests"].sum()), int(before["errors"].sum())
    if n0 == 0 or after.empty:
        return pd.DataFrame(columns=["snapshot_id", "requests_after", "rate_after",
                                     "rate_before", "z"])
    n1, e1 = after["requests"].to_numpy(float), after["errors"].to_numpy(float)
    p0, p1 = e0 / n0, np.divide(e1, n1, out=np.zeros_like(e1), where=n1 > 0)
    pooled = (e0 + e1) / (n0 + n1)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n0 + 1 / np.maximum(n1, 1)))
    z = np.divide(p1 - p0, se, out=np.zeros_like(se), where=se > 0)
    frame = pd.DataFrame({"snapshot_id": after.index, "requests_after": n1.astype(int),
                          "rate_after": p1, "rate_before": p0, "z": z})
    return frame.sort_values(["z", "snapshot_id"], ascending=[False, True], ignore_index=True)
