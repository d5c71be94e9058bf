"""The static simulated world: products, segments, models, features, lineage, pipelines.

Everything here is fixed for a lake (drawn once from the seed): which latent
factors each source carries, how tables and transforms mix their inputs, each
feature's projection, unit and offset, which model reads which features and
which models serve which product segments. :mod:`.requests` turns it into
per-request data, hour by hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import networkx as nx
import numpy as np

#: latent factors of a request: what users, items and contexts are really like
LATENT_DIM = 8
#: values each non-feature lineage node carries per request (its "columns")
NODE_CHANNELS = 4


@dataclass(frozen=True)
class Scale:
    """Sizes of a simulated lake."""

    days: int
    demo_days: int
    #: simulated requests per segment-hour at average traffic (drives every table's size)
    requests_per_hour: int
    #: share of requests logged into ``serving_samples``
    sample_rate: float
    #: training examples per (model, daily partition)
    train_rows: int
    train_steps: int
    #: aggregation windows of windowed features (more windows, more features)
    windows: tuple[str, ...]
    embedding_dim: int
    hidden: tuple[int, int]


SCALES: dict[str, Scale] = {
    "small": Scale(14, 21, 320, 0.12, 1500, 200, ("7d",), 5, (24, 12)),
    "medium": Scale(28, 42, 1100, 0.15, 6000, 500, ("1d", "7d"), 8, (48, 24)),
    "large": Scale(42, 63, 2400, 0.1, 20000, 800, ("1d", "7d", "28d"), 16, (64, 32)),
}

PRE_DAYS = 4
"""Days of training partitions before the timeline starts (the first snapshots train on them)."""


# --- the catalog -------------------------------------------------------------------------

#: source -> (pipeline, latent factors it carries, base null fraction)
_SOURCES = {
    "raw.clicks": ("clicks_ingest", (0, 1), 0.01),
    "raw.impressions": ("impressions_ingest", (0, 2), 0.004),
    "raw.user_profile": ("crm_export", (3, 1, 6), 0.02),
    "raw.ad_events": ("ad_events_ingest", (5, 0), 0.01),
    "raw.listings": ("listings_ingest", (6, 3), 0.008),
    "raw.social_graph": ("graph_export", (4, 1), 0.015),
    "raw.device_logs": ("device_logs_ingest", (7, 2), 0.02),
}
_TABLES = {
    "tbl.user_events": ("events_warehouse", ("raw.clicks", "raw.impressions")),
    "tbl.user_profile": ("profile_warehouse", ("raw.user_profile",)),
    "tbl.ad_interactions": ("ads_warehouse", ("raw.ad_events", "raw.impressions")),
    "tbl.listing_catalog": ("catalog_sync", ("raw.listings",)),
    "tbl.social_edges": ("profile_warehouse", ("raw.social_graph",)),
    "tbl.device_sessions": ("events_warehouse", ("raw.device_logs", "raw.impressions")),
}
#: transform -> (pipeline, inputs, windowed?, feature base names; a trailing "#" marks a count)
_TRANSFORMS = {
    "xf.engagement_agg": ("feed_features", ("tbl.user_events",), True,
                          ("clicks#", "likes#", "shares#", "dwell-time sec", "comments#", "hides#")),
    "xf.recency": ("feed_features", ("tbl.user_events", "tbl.device_sessions"), False,
                   ("last visit hrs", "days since signup#", "session gap (median)",
                    "it's a return visit")),
    "xf.user_embedding": ("user_embeddings", ("tbl.user_profile", "tbl.user_events",
                                               "tbl.social_edges"), False, ()),
    "xf.ad_ctr_stats": ("ads_features", ("tbl.ad_interactions",), True,
                        ("ad ctr", "ad impressions#", 'ad "conversions"#', "advertiser spend €")),
    "xf.price_stats": ("marketplace_features", ("tbl.listing_catalog", "tbl.user_profile"), True,
                       ("prix moyen", "größe warenkorb#", "price p90", "discount rate")),
    "xf.social_signals": ("feed_features", ("tbl.social_edges",), True,
                          ("friends active#", "follows#", "réactions#")),
    "xf.device_stats": ("feed_features", ("tbl.device_sessions",), False,
                        ("battery level", "app version age#", "screen.width px", "conexión 4g")),
    "xf.listing_quality": ("marketplace_features", ("tbl.listing_catalog",), False,
                           ("photo count#", "description length#", "seller rating",
                            "listing age days#")),
}
#: pipeline -> (orchestrator, target)
_PIPELINES = {
    "clicks_ingest": ("dagster", "clicks_ingest_sensor"),
    "impressions_ingest": ("airflow", "impressions_ingest_dag"),
    "crm_export": ("external", "crm-vendor nightly export"),
    "ad_events_ingest": ("dagster", "ad_events_hourly_schedule"),
    "listings_ingest": ("airflow", "listings_ingest_dag"),
    "graph_export": ("external", "social-graph team export"),
    "device_logs_ingest": ("dagster", "device_logs_sensor"),
    "events_warehouse": ("airflow", "events_warehouse_daily"),
    "profile_warehouse": ("airflow", "profile_warehouse_daily"),
    "ads_warehouse": ("airflow", "ads_warehouse_hourly"),
    "catalog_sync": ("dagster", "catalog_sync_schedule"),
    "feed_features": ("dagster", "feed_features_hourly_schedule"),
    "user_embeddings": ("dagster", "user_embedding_sensor"),
    "ads_features": ("airflow", "ads_features_dag"),
    "marketplace_features": ("dagster", "marketplace_features_schedule"),
}
#: product -> (task, segments with relative traffic, break-even cost of showing / price tolerance)
_PRODUCTS = {
    "feed": ("binary_classification", {"us": 1.0, "intl": 0.8}, 0.3),
    "ads": ("binary_classification", {"us": 0.7, "eu": 0.5}, 0.12),
    "marketplace": ("regression", {"us": 0.5, "br": 0.35}, 6.0),
}
#: model -> (product, {segment: share of the segment's requests}, transforms it reads)
_MODELS = {
    "feed_ranker": ("feed", {"us": 0.7, "intl": 1.0},
                    ("xf.engagement_agg", "xf.recency", "xf.user_embedding", "xf.social_signals")),
    "feed_explore": ("feed", {"us": 0.3},
                     ("xf.engagement_agg", "xf.social_signals", "xf.device_stats")),
    "ads_ctr": ("ads", {"us": 1.0, "eu": 1.0},
                ("xf.ad_ctr_stats", "xf.engagement_agg", "xf.user_embedding", "xf.device_stats")),
    "mp_value": ("marketplace", {"us": 1.0, "br": 1.0},
                 ("xf.price_stats", "xf.listing_quality", "xf.user_embedding", "xf.recency")),
}

#: per-product true label: weights on latent factors, one interaction, intercept
_LABELS = {
    "feed": (np.array([1.1, 0.9, 0.5, 0.0, 0.6, 0.0, 0.0, 0.0]), (0, 1, 0.4), -0.9),
    "ads": (np.array([0.5, 0.2, 0.0, -0.4, 0.0, 1.3, 0.0, 0.0]), (1, 5, 0.3), -1.7),
    "marketplace": (np.array([1.5, 0.0, 0.0, -4.0, 0.0, 0.0, 7.0, 0.0]), (6, 1, 1.5), 30.0),
}
#: segment latent offsets (countries differ)
_SEGMENT_SHIFT = {"us": 0.1, "intl": -0.2, "eu": -0.1, "br": -0.3}


@dataclass(frozen=True)
class Feature:
    name: str
    node_id: str
    transform: str
    #: a non-negative count (its value is a softplus of the signal)
    is_count: bool
    #: projection of the transform's channels (unit norm, ``[C]``)
    weights: np.ndarray
    #: unit of the served value
    scale: float
    offset: float
    #: feature-specific noise, in units of the signal's spread
    noise: float


@dataclass(frozen=True)
class Model:
    model_id: str
    product: str
    task: str
    #: segment -> share of that segment's requests this model serves
    shares: dict[str, float]
    features: tuple[str, ...]
    #: position of the count feature that the model log-transforms
    log_position: int

    @property
    def dataset_id(self) -> str:
        return f"{self.model_id}_examples"


@dataclass(frozen=True)
class Product:
    name: str
    task: str
    #: segment -> relative traffic
    segments: dict[str, float]
    #: the prediction threshold above which an item is shown (binary) / price tolerance (regression)
    cost: float
    label_weights: np.ndarray
    label_interaction: tuple[int, int, float]
    label_intercept: float


@dataclass
class World:
    """The fixed structure of a simulated lake and its random parameters."""

    scale: Scale
    products: dict[str, Product]
    models: dict[str, Model]
    features: dict[str, Feature]
    graph: nx.DiGraph
    #: every node's kind and producing pipeline
    node_kind: dict[str, str]
    node_pipeline: dict[str, str]
    #: data nodes' parameters: how they mix their inputs (a source: the latent factors),
    #: ``[inputs, C]``, their offsets ``[C]`` and base null fraction
    node_mix: dict[str, np.ndarray]
    node_offset: dict[str, np.ndarray]
    node_null: dict[str, float]
    pipelines: dict[str, tuple[str, str]]
    segment_shift: dict[str, float]
    #: mean and spread of each feature's signal in a clean reference hour, ``[n_features]``
    #: (set by :func:`.requests.calibrate`; they fix units, they do not track the data)
    feature_center: np.ndarray | None = None
    feature_spread: np.ndarray | None = None

    @property
    def feature_names(self) -> list[str]:
        return list(self.features)

    @cached_property
    def transforms(self) -> list[str]:
        return [n for n in self.data_nodes if self.node_kind[n] == "transform"]

    @cached_property
    def feature_projection(self) -> np.ndarray:
        """Block matrix from all transforms' channels to feature signals, ``[n_transforms * C, F]``."""
        transforms = self.transforms
        proj = np.zeros((len(transforms) * NODE_CHANNELS, len(self.features)))
        for j, f in enumerate(self.features.values()):
            t = transforms.index(f.transform)
            proj[t * NODE_CHANNELS:(t + 1) * NODE_CHANNELS, j] = f.weights
        return proj

    @cached_property
    def feature_transform_index(self) -> np.ndarray:
        """Index into ``transforms`` of each feature's transform, ``[F]``."""
        return np.array([self.transforms.index(f.transform) for f in self.features.values()])

    @cached_property
    def feature_column(self) -> dict[str, int]:
        """Feature node id -> column in ``feature_names`` order."""
        return {f.node_id: j for j, f in enumerate(self.features.values())}

    def feature_array(self, attribute: str) -> np.ndarray:
        """One attribute of every feature, in ``feature_names`` order."""
        return np.array([getattr(f, attribute) for f in self.features.values()])

    @property
    def segments(self) -> list[tuple[str, str]]:
        """All (product, segment) pairs in a fixed order."""
        return [(p.name, s) for p in self.products.values() for s in p.segments]

    @cached_property
    def data_nodes(self) -> list[str]:
        """Source, table and transform nodes in topological order."""
        return [n for n in nx.topological_sort(self.graph) if self.node_kind[n] != "feature"]

    def downstream(self, node_id: str) -> set[str]:
        """The node and everything fed by it."""
        return {node_id} | nx.descendants(self.graph, node_id)

    def models_fed_by(self, node_id: str) -> list[str]:
        """Models with at least one feature downstream of ``node_id``, in catalog order."""
        below = self.downstream(node_id)
        return [m.model_id for m in self.models.values()
                if any(self.features[f].node_id in below for f in m.features)]

    def features_fed_by(self, node_id: str, model_id: str | None = None) -> list[str]:
        below = self.downstream(node_id)
        names = self.models[model_id].features if model_id else self.features
        return [f for f in names if self.features[f].node_id in below]

    def busiest_segment(self, model_id: str) -> tuple[str, str]:
        """The (product, segment) where the model serves the most requests."""
        model = self.models[model_id]
        product = self.products[model.product]
        seg = max(model.shares, key=lambda s: model.shares[s] * product.segments[s])
        return model.product, seg


def feature_node_id(feature: str) -> str:
    return f"feat:{feature}"


def build_world(scale: Scale, rng: np.random.Generator) -> World:
    """Draw the world's random parameters (mixing matrices, feature units) for one seed."""
    graph = nx.DiGraph()
    kind, pipeline, mix, offset, null = {}, {}, {}, {}, {}

    for node, (pipe, factors, base_null) in _SOURCES.items():
        loading = rng.normal(0.0, 0.05, (LATENT_DIM, NODE_CHANNELS))
        loading[list(factors)] = rng.normal(0.0, 1.0, (len(factors), NODE_CHANNELS))
        _add_node(graph, kind, pipeline, node, "source", pipe)
        mix[node], offset[node], null[node] = loading, rng.uniform(1.0, 4.0, NODE_CHANNELS), base_null
    for node, (pipe, inputs) in _TABLES.items():
        _add_node(graph, kind, pipeline, node, "table", pipe, inputs)
        mix[node] = _mixing(rng, len(inputs))
        offset[node], null[node] = rng.uniform(1.0, 4.0, NODE_CHANNELS), 0.0
    for node, (pipe, inputs, _, _) in _TRANSFORMS.items():
        _add_node(graph, kind, pipeline, node, "transform", pipe, inputs)
        mix[node] = _mixing(rng, len(inputs))
        offset[node], null[node] = rng.uniform(1.0, 4.0, NODE_CHANNELS), 0.002

    features: dict[str, Feature] = {}
    for transform, (pipe, _, windowed, bases) in _TRANSFORMS.items():
        if not bases:  # the embedding: one feature per dimension
            bases = tuple(f"user.emb.{i}" for i in range(scale.embedding_dim))
        names = [f"{b} {w}" for b in bases for w in scale.windows] if windowed else list(bases)
        for raw in names:
            name = raw.replace("#", "")
            node = feature_node_id(name)
            _add_node(graph, kind, pipeline, node, "feature", pipe, (transform,))
            weights = rng.normal(0.0, 1.0, NODE_CHANNELS)
            features[name] = Feature(
                name=name, node_id=node, transform=transform, is_count="#" in raw,
                weights=weights / np.linalg.norm(weights),
                scale=float(10 ** rng.uniform(-1.0, 2.0)),
                offset=float(rng.uniform(0.5, 3.0)), noise=float(rng.uniform(0.05, 0.3)),
            )

    products = {
        name: Product(name, task, segs, cost, *_LABELS[name])
        for name, (task, segs, cost) in _PRODUCTS.items()
    }
    models = {}
    for model_id, (product, shares, transforms) in _MODELS.items():
        names = tuple(f for f, spec in features.items() if spec.transform in transforms)
        order = rng.permutation(len(names))
        names = tuple(names[i] for i in order)
        log_position = next(i for i, f in enumerate(names) if features[f].is_count)
        models[model_id] = Model(model_id, product, products[product].task, shares, names,
                                 log_position)

    return World(scale, products, models, features, graph, kind, pipeline, mix, offset, null,
                 dict(_PIPELINES), dict(_SEGMENT_SHIFT))


def _add_node(graph, kind, pipeline, node, node_kind, pipe, inputs=()):
    graph.add_node(node)
    graph.add_edges_from((up, node) for up in inputs)
    kind[node], pipeline[node] = node_kind, pipe


def _mixing(rng: np.random.Generator, n_inputs: int) -> np.ndarray:
    """A well-conditioned mix of the inputs' channels, ``[n_inputs * C, C]``."""
    q, _ = np.linalg.qr(rng.normal(size=(n_inputs * NODE_CHANNELS, n_inputs * NODE_CHANNELS)))
    return q[:, :NODE_CHANNELS] * np.sqrt(n_inputs)
