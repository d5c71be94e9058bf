"""What the report's plots need beyond the JSON report, as the triage's visits leave it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from hawkeye_dagster.analysis.rollout import RolloutFinding
from hawkeye_dagster.analysis.topline import ToplineScores


@dataclass
class Evidence:
    """The degraded series and its scores, the suspect model's quality and rollout, the ranked
    features, the lineage path and the counterfactual re-runs."""

    topline: ToplineScores | None = None
    #: (product, segment, metric) of the degraded series
    series: tuple[str, str, str] | None = None
    onset: pd.Timestamp | None = None
    end: pd.Timestamp | None = None
    model_id: str | None = None
    #: the suspect model's quality per bucket and snapshot
    quality: pd.DataFrame | None = None
    rollout: RolloutFinding | None = None
    #: the ranked features (the features step's frame)
    features: pd.DataFrame | None = None
    #: lineage path from the root cause down to a feature
    lineage_path: list[str] = field(default_factory=list)
    #: each root cause's counterfactual re-run (:mod:`hawkeye_dagster.triage.confirm`)
    counterfactuals: list = field(default_factory=list)
