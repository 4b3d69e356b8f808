"""Approve and rollback as Dagster jobs, so that a person can do both from the UI's launchpad, and the CLI runs
the same jobs: either way the action is a run in the UI, and the champion asset records the move."""

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from mlops_assets.config import DatasetSpec, Settings, load_spec
from mlops_assets.defs import names
from mlops_assets.defs.registry.actions import RegistryActionError, RerunGate, approve, rollback
from mlops_assets.defs.registry.assets import champion_metadata
from mlops_assets.defs.registry.gate import current_holdout, judge
from mlops_assets.defs.resources import ChampionInfo, FeatureStoreResource, ModelRegistryResource
from mlops_assets.ml.promote import PromotionDecision

# No `from __future__ import annotations` here: Dagster reads the ops' config annotations at definition time.


# Approve, rollback and retrain runs of one dataset carry this tag with the dataset as its value, so that one
# `tag_concurrency_limits` entry (`applyLimitPerUniqueValue: true`, limit 1) in dagster.yaml runs at most one
# of them per dataset at a time, and datasets never wait on each other. (The same key the retrain sensor's
# policy reads to find the dataset's training runs.)
REGISTRY_TAG = "mlops/dataset"
APPROVE_OP = "approve_version"
ROLLBACK_OP = "rollback_champion"


def registry_run_tags(dataset: str) -> dict[str, str]:
    """The tags of every run that may move `dataset`'s champion (approve, rollback, retrain)."""
    return {REGISTRY_TAG: dataset}


class ApproveConfig(dg.Config):
    version: str
    actor: str = "dagster-ui"
    force: bool = False  # promote without re-running the gate; needs force_reason
    force_reason: str = ""
    as_of: str = ""  # the hold-out's newest label day for the re-run gate; empty: the newest there is


class RollbackConfig(dg.Config):
    reason: str
    actor: str = "dagster-ui"


def _champion_moved(registry: ModelRegistryResource, spec: DatasetSpec, message: str) -> dg.AssetMaterialization:
    """A materialization of the champion asset: the move done outside `retrain_job` shows on the asset's page
    with its history, like the moves the gate makes."""
    model_name = spec.model_name
    return dg.AssetMaterialization(
        asset_key=names.asset_key(spec.name, "champion"),
        description=message,
        metadata={**champion_metadata(registry, model_name), "moved": True, "reason": message},
    )


def _fail(exc: RegistryActionError) -> dg.Failure:
    return dg.Failure(description=str(exc), allow_retries=False)


def rerun_gate(
    ds: DatasetSpec, feature_store: FeatureStoreResource, registry: ModelRegistryResource, as_of: str = ""
) -> RerunGate:
    """The gate an approval re-runs: the version to approve against the champion of the moment, on the
    hold-out a retrain started now would use, through the very call `evaluation_report` makes."""

    def gate(candidate: ChampionInfo, champion: ChampionInfo | None) -> PromotionDecision:
        day = dt.date.fromisoformat(as_of) if as_of else None
        try:
            holdout, _ = current_holdout(ds, feature_store.store(ds), day)
        except (ValueError, dg.Failure) as exc:
            raise RegistryActionError(f"cannot re-run the gate for v{candidate.version}: {exc}") from exc
        return judge(ds, holdout, registry.load_champion(candidate), champion, registry).decision

    return gate


def build_registry_jobs(spec: DatasetSpec) -> dg.Definitions:
    """Approve and rollback for one dataset: their ops move the alias, so they share the dataset's registry
    pool with the champion asset, and their runs carry the dataset's registry tag for the run queue.

    `approve_version` holds the pool while it re-runs the gate (seconds), not only for the move: while it
    judges the version against the champion, no other step of this dataset can move that champion, so the
    compare-and-set that follows is refused only when a mover outside Dagster got in between."""
    registry_pool = names.pool(spec.name, "registry")

    @dg.op(name=names.job_name(spec.name, APPROVE_OP), out=dg.Out(str), pool=registry_pool)
    def approve_version(
        context: dg.OpExecutionContext,
        config: ApproveConfig,
        feature_store: FeatureStoreResource,
        registry: ModelRegistryResource,
    ) -> Iterator[dg.AssetMaterialization | dg.Output[str]]:
        ds = spec
        name = ds.model_name
        try:
            message = approve(
                registry,
                name,
                config.version,
                actor=config.actor,
                rerun_gate=rerun_gate(ds, feature_store, registry, config.as_of),
                force=config.force,
                force_reason=config.force_reason,
            )
        except RegistryActionError as exc:
            raise _fail(exc) from exc
        context.log.info(message)
        yield _champion_moved(registry, spec, message)
        yield dg.Output(message)

    @dg.op(name=names.job_name(spec.name, ROLLBACK_OP), out=dg.Out(str), pool=registry_pool)
    def rollback_champion(
        context: dg.OpExecutionContext,
        config: RollbackConfig,
        registry: ModelRegistryResource,
    ) -> Iterator[dg.AssetMaterialization | dg.Output[str]]:
        name = spec.model_name
        try:
            message = rollback(registry, name, actor=config.actor, reason=config.reason)
        except RegistryActionError as exc:
            raise _fail(exc) from exc
        context.log.info(message)
        yield _champion_moved(registry, spec, message)
        yield dg.Output(message)

    @dg.job(
        name=names.job_name(spec.name, "approve_job"),
        description="Promote a version the gate left pending (or stale) after re-running the gate against the "
        "current champion; force (with a reason) skips the gate.",
        tags=registry_run_tags(spec.name),
    )
    def approve_job() -> None:
        approve_version()

    @dg.job(
        name=names.job_name(spec.name, "rollback_job"),
        description="Move the champion alias back to the version it named before, recording who and why.",
        tags=registry_run_tags(spec.name),
    )
    def rollback_job() -> None:
        rollback_champion()

    return dg.Definitions(jobs=[approve_job, rollback_job])


def run_registry_action(settings: Settings, job_name: str, config: dict[str, Any]) -> str:
    """Run `approve_job` or `rollback_job` on the instance in DAGSTER_HOME (the data folder's by default), as
    the CLI does: the same code path as the UI's launchpad. Returns the op's message; a refusal or a failure
    is a RegistryActionError carrying the reason."""
    from mlops_assets.definitions import build_defs

    spec = load_spec(settings.spec_path)
    op = names.job_name(spec.name, {"approve_job": APPROVE_OP, "rollback_job": ROLLBACK_OP}[job_name])
    home = Path(os.environ.get("DAGSTER_HOME") or settings.data_dir / "dagster_home")
    home.mkdir(parents=True, exist_ok=True)
    job = build_defs(settings.with_spec(settings.spec_path)).resolve_job_def(names.job_name(spec.name, job_name))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = job.execute_in_process(
            # The run's events all go to the instance (the UI shows them); the terminal gets only the outcome.
            run_config={"ops": {op: {"config": config}}, "loggers": {"console": {"config": {"log_level": "ERROR"}}}},
            instance=instance,
            raise_on_error=False,
            tags={"mlops/actor": str(config.get("actor", ""))},
        )
    if result.success:
        return str(result.output_for_node(op))
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            data = event.step_failure_data
            if data.user_failure_data is not None and data.user_failure_data.description:
                raise RegistryActionError(data.user_failure_data.description)
            # An unexpected error (the registry down, ...) is wrapped by Dagster: its cause says what happened.
            error = data.error.cause if data.error is not None and data.error.cause is not None else data.error
            raise RegistryActionError(error.message.strip() if error is not None else f"{job_name} failed")
    raise RegistryActionError(f"{job_name} failed (run {result.run_id})")
