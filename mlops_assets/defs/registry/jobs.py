"""Approve and rollback as Dagster jobs, so that a person can do both from the UI's launchpad."""

import dagster as dg

from mlops_assets.config import DatasetSpec
from mlops_assets.defs.registry.actions import approve, rollback
from mlops_assets.defs.resources import ModelRegistryResource, SpecResource


class ApproveConfig(dg.Config):
    version: str
    actor: str = "dagster-ui"


class RollbackConfig(dg.Config):
    reason: str
    actor: str = "dagster-ui"


@dg.op
def approve_version(
    context: dg.OpExecutionContext, config: ApproveConfig, spec: SpecResource, registry: ModelRegistryResource
) -> None:
    context.log.info(approve(registry, spec.get().model_name, config.version, actor=config.actor))


@dg.op
def rollback_champion(
    context: dg.OpExecutionContext,
    config: RollbackConfig,
    spec: SpecResource,
    registry: ModelRegistryResource,
) -> None:
    context.log.info(rollback(registry, spec.get().model_name, actor=config.actor, reason=config.reason))


@dg.job(description="Promote a version the gate left pending a person's approval.")
def approve_job() -> None:
    approve_version()


@dg.job(description="Move the champion alias back to the version it named before, recording who and why.")
def rollback_job() -> None:
    rollback_champion()


def build_registry_jobs(spec: DatasetSpec) -> dg.Definitions:
    return dg.Definitions(jobs=[approve_job, rollback_job])
