"""Dataset specs and deployment settings.

A dataset is described only by its YAML spec, so adding one needs no code change; this module is the single
place that turns YAML into validated objects, and every mistake is reported with the file and the key path so
that a user can fix the spec without reading our code. Deployment settings (where data, the Dagster home and
the MLflow store live) come from environment variables with embedded defaults under the project's data folder.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SPECS_DIR = Path(__file__).resolve().parent / "datasets" / "specs"
DEFAULT_SPEC = SPECS_DIR / "flights.yaml"


class SpecError(ValueError):
    """A dataset spec that cannot be used, with every problem listed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Strict):
    """Where a dataset's rows come from."""

    kind: Literal["package", "folder", "file", "s3"]
    package: str | None = None
    path: str | None = None
    pattern: str = "*"
    bucket: str | None = None
    prefix: str | None = None

    @model_validator(mode="after")
    def _needs(self) -> SourceSpec:
        if self.kind == "package" and not (self.package and self.path):
            raise ValueError("a package source needs `package` and `path` (a file inside the package)")
        if self.kind in ("folder", "file") and not self.path:
            raise ValueError(f"a {self.kind} source needs `path`")
        if self.kind == "s3" and not self.bucket:
            raise ValueError("an s3 source needs `bucket` (and usually `prefix`)")
        return self


class ColumnRule(_Strict):
    """Type and range rules for one raw column; rows breaking a rule are quarantined with the rule named."""

    type: Literal["int", "float", "string", "bool", "timestamp", "date"]
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    values: list[str] | None = None
    # Share of a day's rows that may be null before the day is blocked as a broken delivery (default: 0.5 for
    # non-nullable columns, no limit for nullable ones); fewer nulls are quarantined row by row.
    max_null_share: float | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _range(self) -> ColumnRule:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class FeatureColumn(_Strict):
    type: Literal["numeric", "categorical"]
    expr: str | None = None
    keep: bool = True


class AsOf(_Strict):
    left: str
    right: str


class LookupSpec(_Strict):
    """A side table joined to each event, exactly on keys or as of the event's time."""

    name: str
    source: SourceSpec
    keys: dict[str, str]
    asof: AsOf | None = None
    columns: dict[str, FeatureColumn]


class LabelRate(_Strict):
    by: list[str]
    window_days: int = Field(ge=1)


WINDOW_AGGS = {"mean": "avg", "sum": "sum", "min": "min", "max": "max", "count": "count", "std": "stddev_samp"}


class WindowFeature(_Strict):
    """A lag or rolling aggregate of a raw expression over *previous* days, per group (default: the entity).

    The window covers the days [day - lag_days - days + 1, day - lag_days]; lag_days >= 1, so a row never sees
    its own day, let alone the future: point in time by construction. `days: 1` is a plain lag."""

    expr: str
    agg: Literal["mean", "sum", "min", "max", "count", "std"] = "mean"
    days: int = Field(default=1, ge=1, le=3660)
    lag_days: int = Field(default=1, ge=1, le=3660)
    by: list[str] | None = None  # None: the spec's entity columns; []: one series over every row


class FeaturesSpec(_Strict):
    columns: dict[str, FeatureColumn]
    lookups: list[LookupSpec] = []
    derived: dict[str, FeatureColumn] = {}
    label_rates: dict[str, LabelRate] = {}
    # Lags and rolling aggregates over previous days, computed in DuckDB from a per-day history table.
    windows: dict[str, WindowFeature] = {}


class TargetSpec(_Strict):
    name: str
    expr: str
    label_delay_days: int = Field(default=0, ge=0)


class ReplaySpec(_Strict):
    start: dt.date
    end: dt.date

    @model_validator(mode="after")
    def _order(self) -> ReplaySpec:
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) is before start ({self.start})")
        return self


class MonitoringSpec(_Strict):
    drift_share: float = Field(default=0.5, gt=0, le=1)
    # Days of features compared with the reference. One day of a weekly or daily-cycling feature (weekday,
    # weather) always looks unlike weeks of reference; a week does not, unless the world changed.
    window_days: int = Field(default=1, ge=1)
    evidently_every_days: int = Field(default=1, ge=0)
    reference_max_rows: int = Field(default=200_000, ge=100)
    decay_tolerance: float = Field(default=0.02, ge=0)
    decay_window_days: int = Field(default=7, ge=1)
    # Fewer labelled rows than this in the window never declare decay (a thin window is noise). A dataset with
    # one row a day (a single series) needs it lower, with a longer window.
    decay_min_rows: int = Field(default=200, ge=1)


class CostSpec(_Strict):
    """What staleness and training cost, for the cost-aware decision (`policy.decision: cost`) and for the
    replay's comparison (every strategy's total cost, and the hindsight oracle that minimises it).

    Units are the user's (dollars, CPU-seconds, anything), the same for both prices."""

    # Serving a model that is worse than a fresh one by one unit of the metric (1.0 ROC AUC, one unit of RMSE)
    # for one day costs this much: the price of staleness.
    staleness_price: float = Field(default=1000.0, ge=0)
    # One CPU-second of training costs this much: the price of a retrain is its measured CPU times this.
    cpu_second_price: float = Field(default=1.0, ge=0)
    # cumulative: retrain once the staleness cost accumulated since the last retrain pays for one (rent or
    # buy); threshold: once today's staleness cost, over `horizon_days`, pays for one (Cara, KBS 2024).
    variant: Literal["cumulative", "threshold"] = "cumulative"
    horizon_days: int = Field(default=7, ge=1)
    # A full sweep (new family, hyper-parameters, window) at least this often in data days; a cheap refit of
    # the champion's recipe otherwise, unless refits stop winning the gate.
    sweep_every_days: int = Field(default=90, ge=1)
    # The hard CPU budget of one retrain: a training step that spends more is stopped and the champion stays.
    max_cpu_seconds: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _possible(self) -> CostSpec:
        if self.staleness_price == 0 and self.cpu_second_price == 0:
            raise ValueError("staleness_price and cpu_second_price are both 0: nothing to weigh, set at least one")
        return self


class PolicySpec(_Strict):
    # rules: fixed triggers and a cool-down; cost: staleness cost against retraining cost (see CostSpec).
    decision: Literal["rules", "cost"] = "rules"
    cost: CostSpec = CostSpec()
    # cost mode only: the first model is tried once this many days have labels (default: hold-out +
    # validation + 1 training day), then again every day the baseline still serves, within the ceilings.
    bootstrap_min_days: int | None = Field(default=None, ge=1)
    drift_share_threshold: float = Field(default=0.3, gt=0, le=1)
    decay: bool = True
    cooldown_days: int = Field(default=7, ge=0)
    min_new_labelled_rows: int = Field(default=5000, ge=0)
    max_per_day: int = Field(default=1, ge=1)
    max_per_week: int = Field(default=2, ge=1)
    max_report_age_days: int = Field(default=2, ge=0)
    bootstrap_min_rows: int = Field(default=20000, ge=1)
    # A training run that has reported nothing for this long is dead (a killed process cannot say so): it no
    # longer blocks the next retrain. The run monitor in dagster.yaml fails such runs too.
    stale_run_hours: float = Field(default=6.0, gt=0)


class TrainingSpec(_Strict):
    holdout_days: int = Field(default=7, ge=1)
    validation_days: int = Field(default=7, ge=1)
    slices: list[str] = []
    # A promoted challenger's recipe is fit again on every label arrived by `as_of`, its hold-out included,
    # and that fit is what serves: the gate judged the recipe; without the refit the model in production is
    # always a hold-out older than the data (on drifting data, more than any schedule wins back).
    refit_on_holdout: bool = True


class GateSpec(_Strict):
    min_delta: float = Field(default=0.002, ge=0)
    # A slice's metric on a few hundred rows moves by several points from noise alone: only slices at least
    # this large can veto a promotion.
    min_slice_rows: int = Field(default=1000, ge=1)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    max_slice_regression: float = Field(default=0.02, ge=0)
    require_approval: bool = False


RANKING_METRICS = ("ndcg", "recall", "map", "hit_rate")  # each "@k", k from the spec's `ranking.k`


class RankingSpec(_Strict):
    """A recommender's interactions: who (user) did what (item) when (`event_time`), optionally how much they
    liked it (rating, relevant from `relevance_threshold`). Every ranking model reads exactly these columns;
    the side tables are ordinary `features.lookups`, named here so drift and cold start know the catalogue."""

    user: str
    item: str
    time: str | None = None  # the raw time column; `event_time` is derived from it when the spec omits it
    rating: str | None = None
    relevance_threshold: float | None = None  # rating >= this is relevant (a hit); every interaction without it
    k: int = Field(default=10, ge=1, le=1000)
    items: str | None = None  # the lookup holding the item catalogue (keyed on `item`)
    users: str | None = None  # the lookup holding user attributes (keyed on `user`)

    @model_validator(mode="after")
    def _threshold(self) -> RankingSpec:
        if self.relevance_threshold is not None and self.rating is None:
            raise ValueError("relevance_threshold needs `rating` (the column it applies to)")
        return self


def _ranking_defaults(raw: Any) -> Any:
    """A ranking spec states its interaction columns once; the tabular keys every domain reads (entity,
    target, features, event time, metric) follow from them unless the spec writes them out: the entity is the
    (user, item) pair, the target is relevance, features carry the user and item ids. So the same ingestion,
    quarantine, feature store, sensor and registry handle it without a parallel tree of assets."""
    if not isinstance(raw, dict) or raw.get("task") != "ranking" or not isinstance(raw.get("ranking"), dict):
        return raw
    r = raw["ranking"]
    user, item, rating, thr = r.get("user"), r.get("item"), r.get("rating"), r.get("relevance_threshold")
    if not (isinstance(user, str) and isinstance(item, str)):
        return raw  # the field validation names what is missing
    out = dict(raw)
    out.setdefault("metric", "ndcg")
    out.setdefault("entity", [user, item])
    if "event_time" not in out and isinstance(r.get("time"), str):
        col = r["time"]
        kind = (out.get("schema") or {}).get(col, {}).get("type") if isinstance(out.get("schema"), dict) else None
        out["event_time"] = (
            f'make_timestamp(CAST("{col}" AS BIGINT) * 1000000)'
            if kind in ("int", "float")
            else f'CAST("{col}" AS TIMESTAMP)'
        )
    if "target" not in out:
        expr = f'CAST("{rating}" >= {thr} AS INTEGER)' if rating and thr is not None else "1"
        out["target"] = {"name": "relevant", "expr": expr, "label_delay_days": 0}
    features = dict(out.get("features") or {})
    columns = dict(features.get("columns") or {})
    for col in (user, item):
        columns.setdefault(col, {"type": "categorical"})
    features["columns"] = columns
    out["features"] = features
    return out


class DatasetSpec(_Strict):
    """One dataset, end to end: source, schema, features, target, thresholds and the search space."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    task: Literal["classification", "regression", "ranking"]
    metric: Literal["roc_auc", "log_loss", "accuracy", "rmse", "mae", "r2", "ndcg", "recall", "map", "hit_rate"]
    source: SourceSpec
    schema_: dict[str, ColumnRule] = Field(alias="schema")
    event_time: str
    # Columns that identify what an event is about (a flight, a store). Empty: every row is its own entity,
    # identified by a hash of its raw values (a single series, or events with no key).
    entity: list[str] = []
    target: TargetSpec
    features: FeaturesSpec
    replay: ReplaySpec
    monitoring: MonitoringSpec = MonitoringSpec()
    policy: PolicySpec = PolicySpec()
    training: TrainingSpec = TrainingSpec()
    gate: GateSpec = GateSpec()
    search: dict[str, Any]
    ranking: RankingSpec | None = None  # task: ranking only

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    _ranking_defaults = model_validator(mode="before")(_ranking_defaults)

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        classification_metrics = {"roc_auc", "log_loss", "accuracy"}
        if (self.metric in RANKING_METRICS) != (self.task == "ranking"):
            raise ValueError(f"metric {self.metric!r} does not fit task {self.task!r}")
        if self.task != "ranking" and (self.metric in classification_metrics) != (self.task == "classification"):
            raise ValueError(f"metric {self.metric!r} does not fit task {self.task!r}")
        if (self.ranking is not None) != (self.task == "ranking"):
            raise ValueError("task: ranking needs a `ranking` section, and only it has one")
        if self.ranking is not None:
            r = self.ranking
            for key in ("user", "item", "time", "rating"):
                col = getattr(r, key)
                if col is not None and col not in self.schema_:
                    raise ValueError(f"ranking.{key} names {col!r}, which is not in `schema`")
            lookups = {lk.name: lk for lk in self.features.lookups}
            for key, col in (("items", r.item), ("users", r.user)):
                name = getattr(r, key)
                if name is None:
                    continue
                if name not in lookups:
                    raise ValueError(f"ranking.{key} names {name!r}, which is not a lookup in features.lookups")
                if col not in lookups[name].keys:
                    raise ValueError(f"ranking.{key}: lookup {name!r} must be keyed on {col!r}")
        for col in self.entity:
            if col not in self.schema_:
                raise ValueError(f"entity column {col!r} is not in `schema`")
        names = self.feature_names
        if len(names) != len(set(names)):
            raise ValueError(f"feature names repeat: {sorted({n for n in names if names.count(n) > 1})}")
        for name, rate in self.features.label_rates.items():
            missing = [c for c in rate.by if c not in self.features.columns and c not in self.schema_]
            if missing:
                raise ValueError(f"label_rates.{name}.by names unknown columns {missing}")
        target_cols = [c for c in self.schema_ if re.search(rf"\b{re.escape(c)}\b", self.target.expr)]
        for name, w in self.features.windows.items():
            for c in w.by if w.by is not None else self.entity:
                if c not in self.schema_:
                    raise ValueError(f"features.windows.{name}.by names {c!r}, which is not in `schema`")
            uses_target = [c for c in target_cols if re.search(rf"\b{re.escape(c)}\b", w.expr)]
            if uses_target and w.lag_days < max(1, self.target.label_delay_days):
                raise ValueError(
                    f"features.windows.{name} reads {uses_target} (the target's columns) with lag_days "
                    f"{w.lag_days}, but labels arrive {self.target.label_delay_days} day(s) late: "
                    f"lag_days must be >= {self.target.label_delay_days} or the feature leaks the future"
                )
        for c in self.training.slices:
            if c not in names:
                raise ValueError(f"training.slices names {c!r}, which is not a feature")
        need = self.training.holdout_days + self.training.validation_days + 1
        if self.policy.bootstrap_min_days is not None and self.policy.bootstrap_min_days < need:
            raise ValueError(
                f"policy.bootstrap_min_days is {self.policy.bootstrap_min_days}, but a first model needs at least "
                f"{need} labelled days (training.holdout_days + training.validation_days + 1 to train on)"
            )
        return self

    # --- derived views the rest of the code needs -------------------------------------------------------
    @property
    def feature_columns(self) -> dict[str, FeatureColumn]:
        """Every model input in a stable order: base columns, lookup columns, derived, label rates, windows."""
        out: dict[str, FeatureColumn] = {}
        out.update({k: v for k, v in self.features.columns.items() if v.keep})
        for lk in self.features.lookups:
            out.update({k: v for k, v in lk.columns.items() if v.keep})
        out.update({k: v for k, v in self.features.derived.items() if v.keep})
        out.update({k: FeatureColumn(type="numeric") for k in self.features.label_rates})
        out.update({k: FeatureColumn(type="numeric") for k in self.features.windows})
        return out

    @property
    def feature_names(self) -> list[str]:
        return list(self.feature_columns)

    @property
    def numeric_features(self) -> list[str]:
        return [k for k, v in self.feature_columns.items() if v.type == "numeric"]

    @property
    def categorical_features(self) -> list[str]:
        return [k for k, v in self.feature_columns.items() if v.type == "categorical"]

    @cached_property
    def spec_hash(self) -> str:
        """Hash of the spec's content: part of every model's lineage, so a spec edit is visible."""
        payload = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def model_name(self) -> str:
        return f"{self.name}_model"


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest key of `loc` found in the YAML: a user fixes a file by its lines."""
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            hit = next(((k, v) for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            if hit is None:
                break
            line, node = hit[0].start_mark.line + 1, hit[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _format_errors(path: Path, err: ValidationError, root: yaml.Node | None = None) -> str:
    lines = [f"{path}: {err.error_count()} problem(s) in the dataset spec"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        line = _line_of(root, tuple(e["loc"]))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and level)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  - {loc}: {msg}" + (f" (line {line})" if line is not None else ""))
    return "\n".join(lines)


def load_spec(path: str | Path) -> DatasetSpec:
    """Read and validate a spec file; every problem is reported at once, each with its key path.

    Cached by path and modification time: every asset asks for the spec, and an edit is still picked up."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: no such dataset spec")
    return _load_spec(path.resolve(), path.stat().st_mtime_ns)


@lru_cache(maxsize=16)
def _load_spec(path: Path, mtime_ns: int) -> DatasetSpec:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a dataset spec is a mapping of keys, got {type(raw).__name__}")
    try:
        return DatasetSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_format_errors(path, exc, yaml.compose(path.read_text(encoding="utf-8")))) from None


class Settings(BaseModel):
    """Where things live. Embedded defaults put everything under one data folder (`./data` of the folder the
    command runs in, never beside the installed package); production overrides each location with an
    environment variable, so switching profiles is configuration, not code.

    A deployment holds one or more datasets (`MLOPS_SPECS`, a comma-separated list of spec files, or the
    single `MLOPS_SPEC`); each gets its own key prefix, jobs, sensor, schedules and feature store, and
    shares only the code, the lake, the registry and the instance."""

    model_config = ConfigDict(frozen=True)

    data_dir: Path
    spec_paths: tuple[Path, ...]
    lake_uri: str
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    profile: Literal["embedded", "production"]
    # How a run's steps execute: in one process (embedded: a day's steps are light), or spread over Celery
    # workers (production: dagster-celery on Redis or RabbitMQ; dagster-k8s's executor takes its place on a
    # cluster). Chosen by configuration, never by code.
    executor: Literal["in_process", "multiprocess", "celery"]
    celery_broker: str
    celery_backend: str
    # The offline feature store: one DuckDB file per dataset (embedded: one writer at a time, which the
    # dataset's concurrency pool and a lock wait guarantee), or partitioned Parquet on the lake read by
    # DuckDB (production: each partition written by whichever worker runs it, no single-writer file).
    feature_store: Literal["duckdb", "parquet"] = "duckdb"
    # The online rows (newest feature row per entity) for the API: Redis in production, else the offline store.
    online_redis_url: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        data_dir = Path(env.get("MLOPS_DATA_DIR") or Path.cwd() / "data").resolve()
        profile = env.get("MLOPS_PROFILE", "embedded")
        listed = env.get("MLOPS_SPECS") or env.get("MLOPS_SPEC") or str(DEFAULT_SPEC)
        specs = tuple(Path(p.strip()).resolve() for p in listed.split(",") if p.strip())
        return cls(
            data_dir=data_dir,
            spec_paths=specs,
            lake_uri=env.get("MLOPS_LAKE_URI", str(data_dir / "lake")),
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI", f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}"),
            mlflow_artifact_root=env.get("MLOPS_MLFLOW_ARTIFACT_ROOT", str(data_dir / "mlflow" / "artifacts")),
            profile=profile,  # type: ignore[arg-type]
            executor=env.get("MLOPS_EXECUTOR", "celery" if profile == "production" else "in_process"),  # type: ignore[arg-type]
            celery_broker=env.get("MLOPS_CELERY_BROKER", "redis://127.0.0.1:6379/0"),
            celery_backend=env.get("MLOPS_CELERY_BACKEND", "redis://127.0.0.1:6379/1"),
            feature_store=env.get(  # type: ignore[arg-type]
                "MLOPS_FEATURE_STORE", "parquet" if profile == "production" else "duckdb"
            ),
            online_redis_url=env.get("MLOPS_ONLINE_REDIS_URL") or None,
        )

    @property
    def spec_path(self) -> Path:
        """The deployment's first dataset: what a single-dataset command acts on when no --spec is given."""
        return self.spec_paths[0]

    def with_spec(self, path: str | Path) -> Settings:
        """The same deployment narrowed to one dataset (a replay, a CLI command)."""
        return self.model_copy(update={"spec_paths": (Path(path).resolve(),)})

    @property
    def feature_store_uri(self) -> str:
        """Where the Parquet feature store keeps its partitions: a folder of the lake, local or S3."""
        return f"{self.lake_uri.rstrip('/')}/feature_store"
