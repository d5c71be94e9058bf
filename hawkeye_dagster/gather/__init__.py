"""The reads a triage makes: telemetry and snapshots gathered into the pure analyses' inputs.

Every function here takes a :class:`~hawkeye_dagster.lake.reader.TelemetryReader` (or opens
snapshot archives through :mod:`hawkeye_dagster.snapshot_io`), reads what an analysis needs,
and hands it to the pure computation in :mod:`hawkeye_dagster.analysis`, which does no I/O.
This package sits between the analyses and the triage in the layering (core, lake, analysis,
then triage with this package, then the Dagster wiring, then the tools): the triage, the
assets and the sensors call it; the lake and the analyses never do.

- :mod:`~hawkeye_dagster.gather.serving_stats`: a model's features and their hourly
  statistics and reference profiles, read one UTC day at a time;
- :mod:`~hawkeye_dagster.gather.pushdown_stats`: the same statistics assembled from the
  aggregates a SQL database computes (:mod:`hawkeye_dagster.lake.pushdown`);
- :mod:`~hawkeye_dagster.gather.lineage`: the lineage graph of a lake (OpenLineage joined);
- :mod:`~hawkeye_dagster.gather.upstream`: upstream root-cause analysis over a lake;
- :mod:`~hawkeye_dagster.gather.feature_ranking`: the feature ranking's reads (statistics,
  served rows, snapshots);
- :mod:`~hawkeye_dagster.gather.weights`: snapshot weights opened from archives and compared;
- :mod:`~hawkeye_dagster.gather.snapshot_checks`: a snapshot's weight, activation and
  training checks over a lake.
"""
