"""Approve and rollback as Dagster jobs, so that a person can do both from the UI's launchpad, and the CLI runs
the same jobs: either way the action is a run in the UI, and the champion asset records the move."""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from mlops_assets.config import DatasetSpec, Settings, load_spec
from mlops_assets.defs import names
from mlops_assets.defs.registry.actions import RegistryActionError, approve, rollback
from mlops_assets.defs.registry.assets import champion_metadata
from mlops_assets.defs.resources import ModelRegistryResource

APPROVE_OP = "approve_version"
ROLLBACK_OP = "rollback_champion"
TAG_DATASET = "mlops/dataset"

# No `from __future__ import annotations` here: Dagster reads the ops' config annotations at definition time.


class ApproveConfig(dg.Config):
    version: str
    actor: str = "dagster-ui"


class RollbackConfig(dg.Config):
    reason: str
    actor: str = "dagster-ui"


def _fail(exc: RegistryActionError) -> dg.Failure:
    return dg.Failure(description=str(exc), allow_retries=False)


def build_registry_jobs(spec: DatasetSpec) -> dg.Definitions:
    """The dataset's approve and rollback jobs (`flights__approve_job`), acting on its model only."""
    name = spec.model_name

    def champion_moved(registry: ModelRegistryResource, message: str) -> dg.AssetMaterialization:
        """A materialization of the champion asset: the move done outside `retrain_job` shows on the asset's
        page with its history, like the moves the gate makes."""
        return dg.AssetMaterialization(
            asset_key=names.asset_key(spec.name, "champion"),
            description=message,
            metadata={**champion_metadata(registry, name), "moved": True, "reason": message},
        )

    @dg.op(name=names.job_name(spec.name, APPROVE_OP), out=dg.Out(str))
    def approve_version(
        context: dg.OpExecutionContext, config: ApproveConfig, registry: ModelRegistryResource
    ) -> Iterator[dg.AssetMaterialization | dg.Output[str]]:
        try:
            message = approve(registry, name, config.version, actor=config.actor)
        except RegistryActionError as exc:
            raise _fail(exc) from exc
        context.log.info(message)
        yield champion_moved(registry, message)
        yield dg.Output(message)

    @dg.op(name=names.job_name(spec.name, ROLLBACK_OP), out=dg.Out(str))
    def rollback_champion(
        context: dg.OpExecutionContext, config: RollbackConfig, registry: ModelRegistryResource
    ) -> Iterator[dg.AssetMaterialization | dg.Output[str]]:
        try:
            message = rollback(registry, name, actor=config.actor, reason=config.reason)
        except RegistryActionError as exc:
            raise _fail(exc) from exc
        context.log.info(message)
        yield champion_moved(registry, message)
        yield dg.Output(message)

    @dg.job(
        name=names.job_name(spec.name, "approve_job"),
        description="Promote a version the gate left pending a person's approval.",
        tags={TAG_DATASET: spec.name},
    )
    def approve_job() -> None:
        approve_version()

    @dg.job(
        name=names.job_name(spec.name, "rollback_job"),
        description="Move the champion alias back to the version it named before, recording who and why.",
        tags={TAG_DATASET: spec.name},
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
