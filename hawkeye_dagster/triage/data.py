"""What a triage reads, read once per triage with filters pushed down to the lake.

The examined window plus a reference period before it (like hours of
earlier days) bounds every time-series read; serving samples are read per
model and, for quality, without their feature columns.
"""

from __future__ import annotations

from functools import cached_property

import pandas as pd

from hawkeye_dagster.analysis.model_isolation import QUALITY_COLUMNS
from hawkeye_dagster.lake.reader import TelemetryReader, table_spec
from hawkeye_dagster.time_range import TimeRange

#: history before the window that anomalies are judged against
REFERENCE = pd.Timedelta("7D")


class TriageData:
    """Cached, filtered reads of one lake for one window."""

    def __init__(self, reader: TelemetryReader, window: TimeRange,
                 reference: pd.Timedelta = REFERENCE):
        self.reader = reader
        self.window = window
        #: the window and its reference period
        self.span = TimeRange(window.start - reference, window.end)
        self._cache: dict[tuple, pd.DataFrame] = {}

    def _read(self, table: str, **filters) -> pd.DataFrame:
        """Rows of ``table`` with its contract columns only (and feature columns where the
        table has them): columns a writer added beyond the contract never reach a report."""
        spec = table_spec(table)
        if "columns" not in filters and not spec.feature_columns:
            filters["columns"] = list(spec.column_names)
        key = (table, repr(sorted(filters.items())))
        if key not in self._cache:
            self._cache[key] = self.reader.read(table, **filters)
        return self._cache[key]

    @cached_property
    def models(self) -> pd.DataFrame:
        return self._read("models")

    @cached_property
    def snapshots(self) -> pd.DataFrame:
        return self._read("snapshots")

    def task(self, model_id: str) -> str:
        return self.models.loc[self.models["model_id"] == model_id, "task"].iloc[0]

    def topline(self, product: str | None = None, segment: str | None = None) -> pd.DataFrame:
        equals = {k: v for k, v in (("product", product), ("segment", segment)) if v is not None}
        return self._read("topline_metrics", time_range=self.span, equals=equals or None)

    def quality_samples(self, model_id: str, segment: str | None = None) -> pd.DataFrame:
        """A model's served predictions and labels in the span (no feature columns)."""
        samples = self._read("serving_samples", columns=QUALITY_COLUMNS, time_range=self.span,
                             equals={"model_id": model_id})
        return samples if segment is None else samples[samples["segment"] == segment]

    def experiments(self, model_id: str, segment: str | None = None) -> pd.DataFrame:
        rows = self._read("experiments", equals={"model_id": model_id})
        return rows if segment is None else rows[rows["segment"] == segment]

    def model_features(self, model_id: str) -> list[str]:
        """The model's input features in input order."""
        rows = self._read("model_features", equals={"model_id": model_id})
        return rows.sort_values("position")["feature_name"].tolist()

    def serving_inputs(self, model_id: str, time_range: TimeRange) -> pd.DataFrame:
        """Serving samples with their feature columns (only where a step needs the inputs)."""
        return self._read("serving_samples", time_range=time_range, equals={"model_id": model_id})

    def table(self, table: str, **filters) -> pd.DataFrame:
        """Any other table, an extension's declared one included (the reader reads an absent
        optional table as empty)."""
        return self._read(table, **filters)
