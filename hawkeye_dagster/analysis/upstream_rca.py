"""Upstream root cause of bad features: walk the lineage graph up and find where the data broke.

Every ancestor of the bad features is scored on four pieces of evidence:

- its own statistics moved (a change point, :mod:`~hawkeye_dagster.analysis.changepoints`)
  no later than the feature did;
- it is an *origin*: no node above it moved first, so it did not merely
  inherit the change (the most upstream node that moved wins over the
  downstream nodes that carry its data);
- a code, config or schema change was deployed at it shortly before it
  moved (then the cause is the change, kind ``lineage_change``, else the
  data, kind ``lineage_node``);
- it is shared by several of the bad features (a common ancestor explains
  more of what went wrong).

The evidence is combined by a logistic model (:data:`CONFIDENCE_WEIGHTS`,
set so that on simulated incidents the true origin scores above 0.9, nodes
that inherited its change 0.1-0.35 and clean worlds below 0.2; the decision
tree Platt-scales it per root-cause kind). If nothing above a bad feature
moved, the feature itself is the cause (kind ``feature``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import networkx as nx
import numpy as np
import pandas as pd

from hawkeye_dagster.analysis.changepoints import detect_changepoints, select_nodes
from hawkeye_dagster.analysis.lineage_graph import feature_node
from hawkeye_dagster.time_range import TimeRange, as_utc

#: logistic weights of the evidence columns :data:`EVIDENCE` (see :func:`confidence`)
CONFIDENCE_WEIGHTS = {"intercept": -5.0, "moved": 1.0, "origin": 4.0, "change": 1.5,
                      "coverage": 2.0, "log_shift": 0.3}
#: robust z beyond this adds no evidence (a 50-sigma move is as sure as a 5000-sigma one)
_MAX_Z = 100.0
EVIDENCE = tuple(k for k in CONFIDENCE_WEIGHTS if k != "intercept")
_NEVER = np.iinfo(np.int64).max
_HOUR = pd.Timedelta(hours=1)


@dataclass(frozen=True)
class UpstreamSettings:
    """How far to look and what counts as 'before' (defaults suit hourly statistics).

    ``lead``/``lag``: the window scanned for change points starts ``lead``
    before the earliest feature onset (an upstream drift may precede a late
    alert) and ends ``lag`` after the latest. ``baseline``: the reference
    period just before the window. ``slack_buckets``: a node counts as moving
    no later than a feature (or than another node) up to this many
    statistics buckets after it, since onsets are estimated per bucket.
    ``change_window``: a deployed change counts when it lands at most this
    long (and at least the slack) before the node moved. ``drift_lag``: how
    late a gradual drift's estimated onset may fall behind its true start; a
    feature whose own statistics moved up to this long after it was reported
    bad went bad then, and a node that moved up to this long *before* a node
    above it still inherits from it (unless a change deployed at the node
    itself explains its move).

    The durations suit hourly statistics; each series' windows follow its own
    cadence (:meth:`for_cadence`), so daily and hourly series can sit side by
    side in one lake.
    """

    lead: pd.Timedelta = pd.Timedelta(days=2)
    lag: pd.Timedelta = pd.Timedelta(days=1)
    baseline: pd.Timedelta = pd.Timedelta(days=7)
    slack_buckets: int = 2
    change_window: pd.Timedelta = pd.Timedelta(days=1)
    drift_lag: pd.Timedelta = pd.Timedelta(hours=12)
    #: buckets a move must last to be detected (:func:`detect_changepoints`' ``min_buckets``)
    min_buckets: int = 3

    def for_cadence(self, bucket: pd.Timedelta) -> UpstreamSettings:
        """The windows for statistics ``bucket`` apart: each duration, but at least as many
        buckets as the detector needs there. Before the onset 2 buckets (one onset estimate of
        slack either side); after it ``min_buckets + slack_buckets`` (a move that starts in the
        reference bucket can still be confirmed); a baseline of 7 buckets (a median and MAD of
        fewer values are too noisy: 7 is a week of daily buckets, as for hourly ones); a change
        and a drift's lag up to one bucket (the bucket hides when within it they happened)."""
        buckets = pd.Timedelta(bucket)
        return replace(
            self, lead=max(self.lead, 2 * buckets),
            lag=max(self.lag, (self.min_buckets + self.slack_buckets) * buckets),
            baseline=max(self.baseline, 7 * buckets),
            change_window=max(self.change_window, buckets),
            drift_lag=max(self.drift_lag, buckets))

    def span(self, onsets: Sequence[pd.Timestamp]) -> TimeRange:
        """The statistics these windows read around the feature onsets (baseline included)."""
        return TimeRange(min(onsets) - self.lead - self.baseline, max(onsets) + self.lag)


@dataclass(frozen=True)
class UpstreamAnalysis:
    """The result of :func:`upstream_root_cause`.

    ``candidates`` is ranked, most likely first: ``kind`` (``lineage_node``,
    ``lineage_change`` or ``feature``), ``id``, ``node_id``, ``version``,
    ``confidence``, ``onset``, ``stat``, ``before``, ``after``, ``z``,
    ``explains`` (how many bad features lie below), ``depth`` (edges down to
    the nearest bad feature), the evidence columns and ``summary``.
    ``paths`` maps a candidate's ``id`` to the lineage path from its node down
    to each bad feature it explains. ``changepoints`` holds every scanned
    ``(node, stat)`` column of the ancestors.
    """

    features: dict[str, pd.Timestamp]
    candidates: pd.DataFrame
    paths: dict[str, dict[str, list[str]]]
    changepoints: pd.DataFrame

    @property
    def upstream_moved(self) -> bool:
        """Whether any node above the bad features moved."""
        return bool((self.candidates["kind"] != "feature").any())

    def root_causes(self, limit: int = 5) -> list[dict]:
        """The top candidates as the report's ``root_causes`` entries (contract section 5)."""
        entries = []
        for row in self.candidates.head(limit).itertuples():
            entry = {"kind": row.kind, "id": row.id, "confidence": round(float(row.confidence), 4),
                     "summary": row.summary}
            if row.kind == "lineage_change":
                entry["version"] = row.version
            entries.append(entry)
        return entries

    def finding(self) -> str:
        """One sentence for the report's steps."""
        if self.candidates.empty:
            return "no bad features to trace"
        top = self.candidates.iloc[0]
        if not self.upstream_moved:
            return ("nothing upstream of " + ", ".join(map(repr, self.features)) +
                    " moved; the feature itself is the cause")
        return f"{top['summary']} (confidence {top['confidence']:.2f})"


def upstream_root_cause(
    graph: nx.DiGraph,
    bad_features: Mapping[str, pd.Timestamp],
    stats: pd.DataFrame | Sequence[pd.DataFrame],
    changes: pd.DataFrame | None = None,
    settings: UpstreamSettings = UpstreamSettings(),
) -> UpstreamAnalysis:
    """Rank the upstream causes of bad features.

    Parameters
    ----------
    graph:
        From :func:`~hawkeye_dagster.analysis.lineage_graph.build_lineage_graph`.
    bad_features:
        Feature name -> when it went bad (UTC).
    stats:
        Node statistics, wide (``[time x (node_id, stat)]``, from
        :func:`~hawkeye_dagster.analysis.changepoints.pivot_node_stats`), or
        one such frame per cadence (``pivot_by_cadence``), each scanned with
        windows of its own bucket; may hold more nodes and time than needed.
    changes:
        The contract's ``lineage_changes`` (may be ``None``).

    Returns
    -------
    :class:`UpstreamAnalysis`. Cost: one breadth-first walk per bad feature
    plus array work over the ancestors' statistics.
    """
    if not bad_features:
        raise ValueError("no bad features given")
    onsets = {f: as_utc(t) for f, t in bad_features.items()}
    feature_nodes = {f: feature_node(graph, f) for f in onsets}

    # ancestors of each bad feature with their distance down to it
    reverse = graph.reverse(copy=False)
    reach = pd.concat([
        pd.DataFrame(nx.single_source_shortest_path_length(reverse, node).items(),
                     columns=["node_id", "depth"]).assign(feature=f)
        for f, node in feature_nodes.items()], ignore_index=True)
    points = _scan(stats, reach["node_id"].unique(), onsets, settings)
    moves = _strongest_move(points)
    nodes = reach.groupby("node_id", sort=False).agg(depth=("depth", "min"),
                                                    explains=("feature", "size"))
    # windows per node follow its statistics' cadence (the coarsest of its series; a node
    # without statistics takes the finest in the lake)
    bucket = points.groupby("node_id")["bucket"].max().reindex(nodes.index).fillna(
        points["bucket"].min() if len(points) else _HOUR)
    per_bucket = {b: settings.for_cadence(b) for b in bucket.unique()}
    windows = pd.DataFrame({k: bucket.map({b: getattr(w, k) for b, w in per_bucket.items()})
                            for k in ("change_window", "drift_lag")})
    slack = settings.slack_buckets * bucket
    # a feature went bad when it was reported, or when its own node moved shortly after (a
    # drift's detected onset lags its true start alike upstream and at the feature)
    own = {f: (moves["onset"].get(feature_nodes[f], pd.NaT), windows.at[feature_nodes[f],
                                                                       "drift_lag"])
           for f in onsets}
    reach["feature_onset"] = reach["feature"].map(
        {f: own[f][0] if t < own[f][0] <= t + own[f][1] else t for f, t in onsets.items()})
    nodes = nodes.join(reach.groupby("node_id", sort=False).agg(
        reference=("feature_onset", "min"), features=("feature", tuple)))
    nodes = nodes.join(moves)
    nodes["moved"] = nodes["moved"].fillna(False).astype(bool)
    nodes["has_stats"] = nodes.index.isin(points["node_id"])
    nodes = nodes.join(_deployed_changes(changes, nodes, slack,
                                         np.maximum(windows["change_window"], slack)))

    # a node's event: when it moved, or (no statistics of its own) when a change was deployed
    # there and what it feeds shows it: a change whose measured children stayed put moved nothing
    inferred = ~nodes["has_stats"] & ~_quiet_below(graph, nodes)
    event = nodes["onset"].where(nodes["moved"], nodes["change_ts"].where(inferred))
    in_time = event <= nodes["reference"] + slack
    nodes["event"] = event.where(in_time)
    nodes["change"] = nodes["change_ts"].notna() & nodes["event"].notna() & (
        nodes["change_ts"] <= nodes["event"] + slack)
    # inherited: a node above moved first; for plain data moves, or up to ``drift_lag`` after
    # (a drift's onset estimate is noisy: the most upstream mover wins), unless a change
    # deployed at the node itself explains its move; a move only inferred above (a change at a
    # node without statistics) does not outrank a measured move with its own change
    above = _first_event_above(graph, nodes["event"])
    seen_above = _first_event_above(graph, nodes["event"].where(nodes["has_stats"]))
    plain = ~nodes["change"]
    inherited = (seen_above <= nodes["event"] + slack) | (
        (above <= nodes["event"] + slack) & plain) | (
        (above <= nodes["event"] + windows["drift_lag"]) & plain)
    nodes["origin"] = nodes["event"].notna() & ~inherited
    nodes["coverage"] = nodes["explains"] / len(onsets)
    nodes["log_shift"] = np.log1p(np.minimum(np.abs(nodes["z"].fillna(0.0)), _MAX_Z))

    candidates = _rank(nodes, onsets, feature_nodes)
    paths = {row.id: {f: nx.shortest_path(graph, row.node_id, feature_nodes[f])
                      for f in row.features}
             for row in candidates.head(5).itertuples()}
    return UpstreamAnalysis(onsets, candidates.drop(columns="features"), paths, points)


def confidence(nodes: pd.DataFrame, weights: Mapping[str, float] = CONFIDENCE_WEIGHTS) -> np.ndarray:
    """Logistic confidence ``[n_nodes]`` in [0, 1] from the evidence columns :data:`EVIDENCE`."""
    w = np.array([weights[k] for k in EVIDENCE])
    evidence = nodes[list(EVIDENCE)].astype(float).to_numpy()          # [n_nodes, n_evidence]
    return 1.0 / (1.0 + np.exp(-(weights["intercept"] + evidence @ w)))


def _scan(stats: pd.DataFrame | Sequence[pd.DataFrame], node_ids: np.ndarray,
          onsets: dict[str, pd.Timestamp], settings: UpstreamSettings) -> pd.DataFrame:
    """Change points of the nodes' series, each frame (one cadence) with windows of its own
    bucket, plus a ``bucket`` column."""
    frames = [stats] if isinstance(stats, pd.DataFrame) else list(stats)
    parts = []
    for wide in frames:
        bucket = pd.Timedelta(wide.index.freq or _HOUR)
        windows = settings.for_cadence(bucket)
        parts.append(detect_changepoints(
            select_nodes(wide, node_ids), min(onsets.values()) - windows.lead,
            max(onsets.values()) + windows.lag, baseline=windows.baseline,
            min_buckets=settings.min_buckets).assign(bucket=bucket))
    return pd.concat(parts, ignore_index=True)


def _quiet_below(graph: nx.DiGraph, nodes: pd.DataFrame) -> pd.Series:
    """Per node: some node it feeds directly has statistics, and not all of those moved."""
    index = nodes.index
    edges = pd.DataFrame(graph.subgraph(index).edges, columns=["up", "down"])
    below = nodes.loc[edges["down"], ["has_stats", "moved"]].set_axis(edges.index)
    measured = edges.assign(measured=below["has_stats"].to_numpy(),
                            still=(below["has_stats"] & ~below["moved"]).to_numpy())
    per_up = measured.groupby("up")[["measured", "still"]].any()
    return (per_up["measured"] & per_up["still"]).reindex(index, fill_value=False)


def _strongest_move(points: pd.DataFrame) -> pd.DataFrame:
    """Per node: moved at all, its earliest onset, and the stat that moved most (ties go to
    the stat named first, whatever order the points came in)."""
    ranked = points.assign(size=points["z"].abs()).sort_values(
        ["moved", "size", "stat"], ascending=[False, False, True], kind="stable")
    best = ranked.drop_duplicates("node_id").set_index("node_id")
    best["onset"] = points[points["moved"]].groupby("node_id")["onset"].min()
    return best[["moved", "onset", "stat", "before", "after", "z"]]


def _deployed_changes(changes: pd.DataFrame | None, nodes: pd.DataFrame, slack: pd.Series,
                      window: pd.Series) -> pd.DataFrame:
    """The latest change at each node deployed within ``window`` before it could matter
    (``slack`` and ``window`` per node)."""
    columns = ["change_ts", "version", "change_type", "description"]
    if changes is None or changes.empty:
        return pd.DataFrame(index=nodes.index, columns=columns).astype(
            {"change_ts": "datetime64[us, UTC]"})
    found = changes[changes["node_id"].isin(nodes.index)].rename(columns={"ts": "change_ts"})
    found = found.join(nodes[["onset", "reference"]].assign(slack=slack, window=window),
                       on="node_id")
    # before the node's own move if it moved, else before the feature went bad
    limit = found["onset"].fillna(found["reference"]) + found["slack"]
    found = found[(found["change_ts"] <= limit)
                  & (found["change_ts"] >= limit - found["slack"] - found["window"])]
    latest = found.sort_values("change_ts").drop_duplicates("node_id", keep="last")
    return latest.set_index("node_id")[columns]


def _first_event_above(graph: nx.DiGraph, event: pd.Series) -> pd.Series:
    """Per node, the earliest event among the nodes above it (within ``event.index``).

    Relaxes all edges at once until nothing changes (at most the longest
    path's length rounds), so the cost is ``depth x edges`` array work.
    """
    index = event.index
    edges = pd.DataFrame(graph.subgraph(index).edges, columns=["up", "down"])
    up, down = index.get_indexer(edges["up"]), index.get_indexer(edges["down"])
    own = np.where(event.notna(), event.to_numpy("datetime64[ns]").astype(np.int64), _NEVER)
    above = np.full(len(index), _NEVER)
    while True:
        relaxed = above.copy()
        np.minimum.at(relaxed, down, np.minimum(own[up], above[up]))
        if np.array_equal(relaxed, above):
            break
        above = relaxed
    first = pd.to_datetime(np.where(above == _NEVER, np.iinfo(np.int64).min, above), unit="ns",
                           utc=True)
    return pd.Series(first, index=index)


def _rank(nodes: pd.DataFrame, onsets: dict[str, pd.Timestamp],
          feature_nodes: dict[str, str]) -> pd.DataFrame:
    """Candidates (nodes with an event, plus a ``feature`` row per unexplained bad feature), ranked."""
    found = nodes[nodes["event"].notna()].reset_index()
    found["kind"] = np.where(found["change"], "lineage_change", "lineage_node")
    found["version"] = found["version"].where(found["change"])
    found["id"] = found["node_id"]
    explained = {f for fs, origin in zip(found["features"], found["origin"]) if origin for f in fs}

    # the feature's own node moving with nothing above it: the feature is the cause
    own = found["origin"] & (found["depth"] == 0) & ~found["change"]
    found.loc[own, "kind"] = "feature"
    found.loc[own, "id"] = found.loc[own, "features"].map(lambda fs: fs[0])

    unexplained = [f for f in onsets if f not in explained]
    if unexplained:
        quiet = nodes.loc[[feature_nodes[f] for f in unexplained]].reset_index()
        # ``moved`` counts only moves in time: a later one is not what went wrong then
        quiet = quiet.assign(kind="feature", id=unexplained, features=[(f,) for f in unexplained],
                             origin=False, change=False, moved=quiet["event"].notna())
        found = pd.concat([found, quiet], ignore_index=True)
    found["confidence"] = confidence(found)
    found["summary"] = [_summary(row) for row in found.itertuples()]
    return found.sort_values(["confidence", "depth"], ascending=[False, False],
                             ignore_index=True)[
        ["kind", "id", "node_id", "version", "confidence", "onset", "stat", "before", "after", "z",
         "explains", "depth", *EVIDENCE, "change_ts", "features", "summary"]]


def _summary(row) -> str:
    what = f"{row.node_id}" if row.kind != "feature" else f"feature {row.id!r} (node {row.node_id})"
    if row.moved:
        direction = "rose" if row.after > row.before else "fell"
        text = (f"{row.stat} of {what} {direction} from {row.before:.4g} to {row.after:.4g} at "
                f"{_iso(row.onset)} (robust z {row.z:+.1f})")
    elif row.kind == "feature":
        text = f"nothing upstream of {what} moved, nor its own statistics, when it went bad"
    else:
        text = f"{what} has no statistics of its own"
    if row.change:
        text = (f"{row.change_type} change {row.version} deployed at {row.node_id} at "
                f"{_iso(row.change_ts)}: {row.description}; " + text)
    if row.kind != "feature":
        text += f"; above {row.explains} of the bad features"
        text += "; nothing above it moved first" if row.origin else "; inherited from upstream"
    return text


def _iso(ts: pd.Timestamp) -> str:
    return pd.Timestamp(ts).strftime("%Y-%m-%dT%H:%MZ")
