"""Resources shared by every domain, picked per deployment by MLOPS_PROFILE (embedded or production)."""

import datetime as dt
import enum
import json
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import PrivateAttr

from mlops_assets.config import DatasetSpec, Settings
from mlops_assets.storage.feature_sql import FeatureStoreApi
from mlops_assets.storage.lake import Lake, LocalBackend, S3Backend

CHAMPION_ALIAS = "champion"
CHAMPION_HISTORY_TAG = "mlops.champion_history"  # the whole history in one tag, as earlier versions kept it
# One tag per move, named so that names sort in time order: two moves at once each add their own entry,
# where rewriting one shared tag would keep only the last writer's list.
CHAMPION_MOVE_PREFIX = "mlops.champion_move."


class FeatureStoreResource(dg.ConfigurableResource):
    """The offline feature store of any dataset of the deployment: one resource serves every dataset, each
    asset asks for its own dataset's store (resources are keyed by name across the whole Definitions, so a
    per-dataset resource would collide)."""

    kind: str = "duckdb"
    data_dir: str
    parquet_uri: str = ""
    s3_endpoint_url: str | None = None
    online_redis_url: str | None = None

    def store(self, spec: DatasetSpec) -> FeatureStoreApi:
        from mlops_assets.storage.stores import open_feature_store

        return open_feature_store(
            spec,
            kind=self.kind,
            data_dir=Path(self.data_dir),
            parquet_uri=self.parquet_uri,
            s3_endpoint_url=self.s3_endpoint_url,
            online_redis_url=self.online_redis_url,
        )


class LakeResource(dg.ConfigurableResource):
    """A local folder in the embedded profile, an S3 prefix (through dagster-aws) in production."""

    uri: str
    s3_endpoint_url: str | None = None
    s3_region_name: str | None = None

    def lake(self) -> Lake:
        if self.uri.startswith("s3://"):
            from dagster_aws.s3 import S3Resource  # boto3 and dagster-aws: paid only where the lake is S3

            bucket, _, prefix = self.uri[len("s3://") :].partition("/")
            client = S3Resource(endpoint_url=self.s3_endpoint_url, region_name=self.s3_region_name).get_client()
            return Lake(S3Backend(client, bucket, prefix))
        return Lake(LocalBackend(Path(self.uri)))


def _missing(exc: Exception) -> bool:
    """MLflow's "no such model / alias" answer, as opposed to a registry that failed."""
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(exc).lower()


@dataclass(frozen=True)
class ChampionInfo:
    """What downstream assets need to know about the production model, read from its version's tags."""

    name: str
    version: str
    run_id: str
    source: str
    tags: dict[str, str]

    @property
    def is_baseline(self) -> bool:
        return self.tags.get("mlops.is_baseline") == "true"

    @property
    def holdout_metric(self) -> float | None:
        v = self.tags.get("mlops.holdout_metric")
        return float(v) if v not in (None, "", "nan") else None

    @property
    def model_sha256(self) -> str:
        return self.tags["mlops.model_sha256"]

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class AnyChampion(enum.Enum):
    """`expected_previous=ANY_CHAMPION`: move whatever the alias names now (tests and tools only; every
    move in the product says which champion it expects to replace)."""

    ANY = "any"


ANY_CHAMPION: Literal[AnyChampion.ANY] = AnyChampion.ANY


def _v(version: str | None) -> str:
    return f"v{version}" if version is not None else "no champion"


@dataclass(frozen=True)
class MoveOutcome:
    """The result of a compare-and-set on the alias: moved, or refused with the reason a person reads."""

    moved: bool
    version: str
    previous: str | None  # what the alias named when the move was decided, under the lock
    expected: str | AnyChampion | None
    lock: str  # which mutex the read-compare-write ran under ("flock", "pg_advisory_lock", "none")
    reason: str = ""

    @property
    def decision(self) -> str:
        return "moved" if self.moved else "stale"


class ModelRegistryResource(dg.ConfigurableResource):
    """The registry side of MLflow: versions, aliases and the champion's history.

    Run tracking goes through dagster-mlflow's resource; the registry needs a client that outlives a run,
    which that resource does not give, hence this small wrapper.
    """

    tracking_uri: str
    artifact_root: str
    _client: Any = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._ensure_store()
        # Import MLflow and the model loader and open the store now, as the run starts, not in the first step
        # that asks: that step holds its dataset's feature-store pool, and in a fresh run process this costs
        # seconds (about 7 on 2 busy cores) that every other run's steps waited out behind it, so a daemon's
        # backfill ran one day at a time.
        import mlflow.sklearn  # noqa: F401
        import skops.io  # noqa: F401

        _ = self.client

    def _ensure_store(self) -> None:
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)

    @property
    def client(self) -> Any:
        if self._client is None:
            import mlflow

            self._ensure_store()
            mlflow.set_tracking_uri(self.tracking_uri)
            self._client = mlflow_client(self.tracking_uri)
        return self._client

    def ensure_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException as exc:
            if not _missing(exc):
                raise
            self.client.create_registered_model(name, description="Managed by mlops_assets.")

    def champion(self, name: str) -> Any | None:
        """The version the alias names, or None before the first model. Any other registry error (down,
        no permission) propagates: it must never read as "no champion" and trigger a new baseline."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, CHAMPION_ALIAS)
        except MlflowException as exc:
            if _missing(exc):
                return None
            raise

    def champion_info(self, name: str) -> ChampionInfo | None:
        mv = self.champion(name)
        if mv is None:
            return None
        return ChampionInfo(name, str(mv.version), str(mv.run_id), str(mv.source), dict(mv.tags))

    def load_champion(self, info: ChampionInfo) -> Any:
        """The champion's model, verified against the checksum recorded when it was registered."""
        from mlops_assets.storage.models import load_verified

        return load_verified(info.model_uri, info.model_sha256, self.tracking_uri).model

    def version_info(self, name: str, version: str) -> ChampionInfo | None:
        """A registered version read like the champion, or None when the registry has no such version (a
        mistyped version number must read as "unknown", not as a registry failure)."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version(name, str(version))
        except MlflowException as exc:
            if _missing(exc) or getattr(exc, "error_code", "") == "INVALID_PARAMETER_VALUE":
                return None
            raise
        return ChampionInfo(name, str(mv.version), str(mv.run_id), str(mv.source), dict(mv.tags))

    def history(self, name: str) -> list[dict[str, Any]]:
        """Every move of the alias, oldest first: the moves kept one per tag, after any kept in the single
        history tag of earlier versions."""
        from mlflow.exceptions import MlflowException

        try:
            tags = self.client.get_registered_model(name).tags
        except MlflowException as exc:
            if _missing(exc):
                return []
            raise
        legacy = tags.get(CHAMPION_HISTORY_TAG)
        moves = [json.loads(tags[k]) for k in sorted(tags) if k.startswith(CHAMPION_MOVE_PREFIX)]
        return [*(json.loads(legacy) if legacy else []), *moves]

    def _next_move_ns(self, name: str) -> int:
        """The new move's key, after every recorded one even when this worker's clock is behind the last
        mover's: the history is read in key order, which must be the order of the moves."""
        tags = self.client.get_registered_model(name).tags
        stamps = [k[len(CHAMPION_MOVE_PREFIX) :].split(".")[0] for k in tags if k.startswith(CHAMPION_MOVE_PREFIX)]
        return max(time.time_ns(), max((int(s) for s in stamps if s.isdigit()), default=0) + 1)

    def move_champion(
        self,
        name: str,
        version: str,
        *,
        reason: str,
        actor: str,
        data_day: str | None = None,
        kind: str = "promote",
        expected_previous: str | AnyChampion | None = ANY_CHAMPION,
        extra: Mapping[str, Any] | None = None,
    ) -> MoveOutcome:
        """Point the alias at `version`, only if it still names `expected_previous` (None: no champion yet),
        and record the move (MLflow keeps no history of aliases itself, and a rollback needs to know where
        the alias was before).

        Compare-and-set: a gate compares a challenger with one champion; if another run moved the alias
        since, promoting now would replace a model the challenger was never compared with. MLflow has no
        conditional alias write, so the read, the comparison and both writes run under `champion_lock` (a
        file lock for a SQLite store, a PostgreSQL advisory lock for a PostgreSQL one), which every mover
        takes whatever launched it; the Dagster pool on the moving steps only keeps them from waiting here.
        A refused move returns `moved=False` with the reason; it changes nothing.

        `kind` (baseline, promote, approve, rollback) lets a rollback tell a move forward from a move back.
        The alias and its record are two registry writes: when the second fails, the alias is put back, so
        a registry failure never leaves a champion that no record explains. Each move is its own tag, added
        and never rewritten; under the lock, each record's `previous` is the version the move before it set."""
        from mlops_assets.ml.promote import champion_lock

        if expected_previous is not None and expected_previous is not ANY_CHAMPION:
            expected_previous = str(expected_previous)  # MLflow's ModelVersion.version is an int
        with champion_lock(self.tracking_uri, name) as lock:
            current = self.champion(name)
            now = str(current.version) if current is not None else None
            if expected_previous is not ANY_CHAMPION and now != expected_previous:
                return MoveOutcome(
                    False,
                    str(version),
                    now,
                    expected_previous,
                    lock,
                    f"champion moved from {_v(expected_previous)} to {_v(now)} since the rollback read it; "
                    f"not rolled back to v{version}"
                    if kind == "rollback"
                    else f"champion moved from {_v(expected_previous)} to {_v(now)} since the evaluation; "
                    f"v{version} not promoted",
                )
            move = {
                **(extra or {}),  # first: what the caller adds never overwrites what the move is
                "version": str(version),
                "previous": now,
                "kind": kind,
                "reason": reason[:2000],  # MLflow caps a tag's value; the reason is the only free text
                "actor": actor,
                "data_day": data_day,
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                **({"compared_with": expected_previous} if expected_previous is not ANY_CHAMPION else {}),
            }
            key = f"{CHAMPION_MOVE_PREFIX}{self._next_move_ns(name):020d}.{uuid.uuid4().hex[:8]}"
            self.client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version))
            try:
                self.client.set_registered_model_tag(name, key, json.dumps(move))
            except Exception:
                if now is not None:
                    self.client.set_registered_model_alias(name, CHAMPION_ALIAS, now)
                else:
                    self.client.delete_registered_model_alias(name, CHAMPION_ALIAS)
                raise
        return MoveOutcome(True, str(version), now, expected_previous, lock)


def mlflow_client(tracking_uri: str) -> Any:
    """An MLflow client whose store is safe to open first, one per tracking URI and process.

    The first process to open a new SQLite store creates its tables and runs MLflow's migrations, and MLflow
    opens the store in the client's constructor; two processes doing it at once (a run and the API's workers,
    all starting on a fresh folder) break alembic ("table datasets already exists", "expected to match one
    row"). So a client of a SQLite store is built, and both of its stores opened, under a lock beside the file.
    Building one costs about 0.1 s (the store's schema check), which every run of a replay paid again; a forked
    child builds its own rather than share its parent's connections.
    """
    return _mlflow_client(tracking_uri, os.getpid())


@lru_cache(maxsize=8)
def _mlflow_client(tracking_uri: str, _pid: int) -> Any:
    from mlflow import MlflowClient

    if not tracking_uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=tracking_uri)
    import fcntl

    lock_path = Path(tracking_uri[len("sqlite:///") :] + ".init.lock")
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(tracking_uri=tracking_uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
    return client


def ensure_experiment(tracking_uri: str, name: str, artifact_root: str) -> str:
    """Create the experiment with an explicit artifact location: MLflow's default for a SQLite store is
    ./mlruns under whatever directory the process started in."""
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    client = mlflow_client(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = artifact_root if "://" in artifact_root else Path(artifact_root).resolve().as_uri()
    return str(client.create_experiment(name, artifact_location=f"{location.rstrip('/')}/{name}"))


class MlflowTrackingResource(dg.ConfigurableResource):
    """One MLflow run per training step, in the dataset's own experiment.

    dagster-mlflow's resource fixes the experiment in its configuration (one per deployment, where we need one
    per dataset) and its end-of-run hook can close the MLflow run before the last step (dagster-io/dagster
    #21872); a run opened and closed around the step that logs to it has neither problem."""

    tracking_uri: str
    artifact_root: str

    @contextmanager
    def run(self, experiment: str, *, run_name: str, tags: dict[str, str]) -> Iterator[Any]:
        import mlflow

        experiment_id = ensure_experiment(self.tracking_uri, experiment, self.artifact_root)
        mlflow.set_tracking_uri(self.tracking_uri)
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as active:
            yield active


@contextmanager
def nested_run(run_name: str) -> Iterator[Any]:
    """A child of the active MLflow run, in the parent's experiment. MLflow puts a new run, nested or not, in
    the process's active experiment (the default one when none was set), not in its parent's."""
    import mlflow

    parent = mlflow.active_run()
    if parent is None:
        raise RuntimeError(f"nested run {run_name!r} opened with no MLflow run active")
    with mlflow.start_run(run_name=run_name, nested=True, experiment_id=parent.info.experiment_id) as child:
        yield child


@contextmanager
def reopened_run(tracking_uri: str, run_id: str) -> Iterator[Any]:
    """An MLflow run opened again to log more to it, in whatever experiment the process last used.

    MLflow refuses to reopen a run when its process-wide active experiment is another one, whatever
    `experiment_id` says; a worker process that serves several datasets (Celery in production) holds the last
    one it touched. Setting the run's own experiment first is the one way MLflow accepts."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = mlflow_client(tracking_uri).get_run(run_id).info.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    with mlflow.start_run(run_id=run_id) as active:
        yield active


def build_resources(settings: Settings) -> dict[str, Any]:
    """One place that decides what each resource is for the profile in force. No resource belongs to a
    dataset: every dataset of the deployment shares them, and passes its spec where it matters."""
    io_manager: Any
    endpoint = dg.EnvVar("MLOPS_S3_ENDPOINT_URL").get_value()
    if settings.profile == "production":
        from dagster_aws.s3 import S3PickleIOManager, S3Resource

        bucket, _, prefix = settings.lake_uri.removeprefix("s3://").partition("/")
        io_manager = S3PickleIOManager(
            s3_resource=S3Resource(endpoint_url=endpoint),
            s3_bucket=bucket,
            s3_prefix=f"{prefix.rstrip('/')}/io" if prefix else "io",
        )
    else:
        io_manager = dg.FilesystemIOManager(base_dir=str(settings.data_dir / "io"))
    return {
        "feature_store": FeatureStoreResource(
            kind=settings.feature_store,
            data_dir=str(settings.data_dir),
            parquet_uri=settings.feature_store_uri,
            s3_endpoint_url=endpoint,
            online_redis_url=settings.online_redis_url,
        ),
        "lake": LakeResource(uri=settings.lake_uri, s3_endpoint_url=endpoint),
        "registry": ModelRegistryResource(
            tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
        ),
        "mlflow": MlflowTrackingResource(
            tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
        ),
        "io_manager": io_manager,
    }
