"""The one entry point: every domain's definitions merged, resources picked by the profile in force."""

import dagster as dg
from dagster_mlflow import end_mlflow_on_run_finished

from mlops_assets.config import Settings, load_spec
from mlops_assets.defs.features.assets import build_features
from mlops_assets.defs.ingestion.assets import build_ingestion
from mlops_assets.defs.monitoring.assets import build_monitoring
from mlops_assets.defs.monitoring.sensors import (
    RETRAIN_JOB,
    labels_so_far,
    retrain_sensor,
    retrain_tags,
    training_run_config,
)
from mlops_assets.defs.partitions import daily_partitions
from mlops_assets.defs.registry.assets import build_registry
from mlops_assets.defs.registry.jobs import build_registry_jobs
from mlops_assets.defs.resources import build_resources
from mlops_assets.defs.serving.assets import build_serving
from mlops_assets.defs.training.assets import build_training

DAILY_ASSETS = [
    "raw_batches",
    "labels",
    "features",
    "drift_report",
    "batch_predictions",
    "performance_report",
]
TRAINING_ASSETS = [
    "training_dataset",
    "candidate_models",
    "evaluation_report",
    "registered_model_version",
    "champion",
]


def build_executor(settings: Settings) -> dg.ExecutorDefinition:
    """The executor the profile asks for. Embedded: one process, because a day's steps are a few hundred
    milliseconds each and a process per step would cost more than the work. Production: Celery workers
    (`dagster-celery worker start -y deploy/celery.yaml`), which take the sweep off the daemon's machine."""
    if settings.executor == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(
            {"broker": settings.celery_broker, "backend": settings.celery_backend}, name="celery"
        )
    if settings.executor == "multiprocess":
        return dg.multiprocess_executor
    return dg.in_process_executor


def build_defs(settings: Settings) -> dg.Definitions:
    spec = load_spec(settings.spec_path)
    partitions = daily_partitions(spec)
    executor = build_executor(settings)
    daily_job = dg.define_asset_job(
        "daily_job",
        selection=DAILY_ASSETS,
        partitions_def=partitions,
        executor_def=executor,
        description="One day through ingestion, features, monitoring and batch predictions.",
    )
    retrain_job = dg.define_asset_job(
        RETRAIN_JOB,
        selection=TRAINING_ASSETS,
        executor_def=executor,
        hooks={end_mlflow_on_run_finished},
        description="Training set, sweep, evaluation, registration and the promotion gate.",
        tags={"mlops/dataset": spec.name},
    )
    bootstrap_job = dg.define_asset_job(
        "bootstrap_job",
        selection=["lookup_tables", "baseline_model"],
        executor_def=executor,
        description="Side tables into the feature store and a baseline champion, once before the first day.",
    )
    daily_schedule = dg.build_schedule_from_partitioned_job(
        daily_job,
        hour_of_day=2,
        name="daily_monitoring_schedule",
        description="Each day after midnight: the previous day through ingestion, monitoring and predictions.",
    )

    @dg.schedule(
        job=retrain_job,
        cron_schedule="0 4 * * 0",
        name="weekly_retrain_schedule",
        description="A periodic retrain every Sunday, whatever the monitors say; the gate still decides.",
    )
    def weekly_retrain(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        # Train as of the newest day whose labels have arrived (not the wall clock), and tag the run like the
        # sensor does so that its cool-down and weekly ceiling count this retrain too.
        as_of, total = labels_so_far(context.instance)
        if as_of is None:
            return dg.SkipReason("no labels have arrived yet: nothing to retrain on")
        reason = f"weekly retrain as of {as_of}, whatever the monitors say; the gate still decides"
        return dg.RunRequest(
            run_key=f"weekly:{spec.name}:{as_of.isoformat()}",
            run_config=training_run_config(as_of, "schedule"),
            tags=retrain_tags(spec, as_of, "schedule", reason, total),
        )

    domains = dg.Definitions.merge(
        build_ingestion(spec),
        build_features(spec),
        build_monitoring(spec, settings),
        build_training(spec, settings),
        build_registry(spec),
        build_registry_jobs(spec),
        build_serving(spec),
    )
    return dg.Definitions.merge(
        domains,
        dg.Definitions(
            jobs=[daily_job, retrain_job, bootstrap_job],
            schedules=[daily_schedule, weekly_retrain],
            sensors=[retrain_sensor],
            resources=build_resources(settings),
            executor=executor,
        ),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs(Settings.from_env())
