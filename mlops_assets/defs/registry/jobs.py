"""Approve and rollback as Dagster jobs, so that a person can do both from the UI's launchpad, and the CLI runs
the same jobs: either way the action is a run in the UI, and the champion asset records the move."""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from mlops_assets.config import DatasetSpec, Settings
from mlops_assets.defs.registry.actions import RegistryActionError, approve, rollback
from mlops_assets.defs.registry.assets import champion_metadata
from mlops_assets.defs.resources import ModelRegistryResource, SpecResource

# No `from __future__ import annotations` here: Dagster reads the ops' config annotations at definition time.


class ApproveConfig(dg.Config):
    version: str
    actor: str = "dagster-ui"


class RollbackConfig(dg.Config):
    reason: str
    actor: str = "dagster-ui"


def _champion_moved(registry: ModelRegistryResource, model_name: str, message: str) -> dg.AssetMaterialization:
    """A materialization of the champion asset: the move done outside `retrain_job` shows on the asset's page
    with its history, like the moves the gate makes."""
    return dg.AssetMaterialization(
        asset_key="champion",
        description=message,
        metadata={**champion_metadata(registry, model_name), "moved": True, "reason": message},
    )


def _fail(exc: RegistryActionError) -> dg.Failure:
    return dg.Failure(description=str(exc), allow_retries=False)


@dg.op(out=dg.Out(str))
def approve_version(
    context: dg.OpExecutionContext, config: ApproveConfig, spec: SpecResource, registry: ModelRegistryResource
) -> Iterator[dg.AssetMaterialization | dg.Output[str]]:
    name = spec.get().model_name
    try:
        message = approve(registry, name, config.version, actor=config.actor)
    except RegistryActionError as exc:
        raise _fail(exc) from exc
    context.log.info(message)
    yield _champion_moved(registry, name, message)
    yield dg.Output(message)


@dg.op(out=dg.Out(str))
def rollback_champion(
    context: dg.OpExecutionContext,
    config: RollbackConfig,
    spec: SpecResource,
    registry: ModelRegistryResource,
) -> Iterator[dg.AssetMaterialization | dg.Output[str]]:
    name = spec.get().model_name
    try:
        message = rollback(registry, name, actor=config.actor, reason=config.reason)
    except RegistryActionError as exc:
        raise _fail(exc) from exc
    context.log.info(message)
    yield _champion_moved(registry, name, message)
    yield dg.Output(message)


@dg.job(description="Promote a version the gate left pending a person's approval.")
def approve_job() -> None:
    approve_version()


@dg.job(description="Move the champion alias back to the version it named before, recording who and why.")
def rollback_job() -> None:
    rollback_champion()


def build_registry_jobs(spec: DatasetSpec) -> dg.Definitions:
    return dg.Definitions(jobs=[approve_job, rollback_job])


def run_registry_action(settings: Settings, job_name: str, config: dict[str, Any]) -> str:
    """Run `approve_job` or `rollback_job` on the instance in DAGSTER_HOME (the data folder's by default), as
    the CLI does: the same code path as the UI's launchpad. Returns the op's message; a refusal or a failure
    is a RegistryActionError carrying the reason."""
    from mlops_assets.definitions import build_defs

    op = {"approve_job": "approve_version", "rollback_job": "rollback_champion"}[job_name]
    home = Path(os.environ.get("DAGSTER_HOME") or settings.data_dir / "dagster_home")
    home.mkdir(parents=True, exist_ok=True)
    job = build_defs(settings).resolve_job_def(job_name)
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
