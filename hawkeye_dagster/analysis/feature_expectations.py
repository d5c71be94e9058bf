"""Great Expectations adapter: runs the feature health checks over a check frame.

Each :class:`~hawkeye_dagster.analysis.feature_health.HealthCheck` becomes one
column-pair expectation (limit >= observed, or observed >= limit), so limits
can differ per feature while one expectation covers every (hour, feature) row.
Rows where the statistic is missing (an hour with no finite value) are left to
the null-fraction check.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import great_expectations as gx
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig

from hawkeye_dagster.analysis.feature_health import CHECKS, HealthCheck

#: the columns that identify a row of a check frame
INDEX_COLUMNS = ("hour", "column")


def expectation_for(check: HealthCheck) -> gx.expectations.Expectation:
    """The GX expectation that ``check`` holds on every row of a check frame."""
    above, below = (check.limit, check.observed) if check.upper else (check.observed, check.limit)
    return gx.expectations.ExpectColumnPairValuesAToBeGreaterThanB(
        column_A=above, column_B=below, or_equal=True, ignore_row_if="either_value_is_missing",
        meta={"check": check.name}, description=check.description,
    )


def run_expectations(frame: pd.DataFrame, checks: Sequence[HealthCheck] = CHECKS, *,
                     index: Sequence[str] = INDEX_COLUMNS) -> tuple[dict[str, bool], pd.DataFrame]:
    """Validate ``frame`` with an ephemeral GX context.

    Returns the success of each check by name, and the failing rows as a frame
    of the ``index`` columns (which identify a row) and ``check``.
    """
    index = list(index)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(f"feature-health-{uuid.uuid4().hex}")
    batch = source.add_dataframe_asset("check_frame").add_batch_definition_whole_dataframe(
        "all").get_batch(batch_parameters={"dataframe": frame.reset_index(drop=True)})
    suite = gx.ExpectationSuite(name="feature_health",
                                expectations=[expectation_for(c) for c in checks])
    result = batch.validate(suite, result_format={
        "result_format": "COMPLETE", "unexpected_index_column_names": index})
    success, failures = {}, []
    for item in result.results:
        name = item.expectation_config.meta["check"]
        success[name] = bool(item.success)
        rows = item.result.get("unexpected_index_list") or []
        if rows:
            failures.append(pd.DataFrame(rows)[index].assign(check=name))
    if not failures:
        return success, frame.iloc[:0][index].assign(check=pd.Series([], dtype=str))
    return success, pd.concat(failures, ignore_index=True)
