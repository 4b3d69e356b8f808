"""The one entry point: every dataset of the deployment, each under its own key prefix, with the resources
the profile in force picks.

A dataset's definitions are built by the same domain factories for every spec; its asset keys are then put
under the dataset's name (`flights/raw_batches`) and its jobs, sensor and schedules carry the name too
(`flights__daily_job`), so N specs sit side by side in one instance and UI and share nothing but the code and
the resources (which take the spec as an argument, never as configuration).
"""

import dagster as dg

from mlops_assets.config import DatasetSpec, Settings, load_spec
from mlops_assets.defs import names
from mlops_assets.defs.features.assets import build_features
from mlops_assets.defs.ingestion.assets import build_ingestion
from mlops_assets.defs.monitoring.assets import build_monitoring
from mlops_assets.defs.monitoring.sensors import (
    RETRAIN_JOB,
    TAG_DATASET,
    build_retrain_sensor,
    labels_so_far,
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
BOOTSTRAP_ASSETS = ["lookup_tables", "baseline_model"]


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


def _prefixed(defs: dg.Definitions) -> list[dg.AssetsDefinition]:
    """The domains' assets with their dependencies on each other moved under the dataset's key prefix: the
    domains name their upstream assets plainly (`deps=["features"]`), as one dataset sees them."""
    assets = [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)]
    # Each asset is declared under the prefix already (so its op is named `flights__features` and two datasets'
    # ops never collide); what still names a plain key is a dependency given by name.
    replace = {dg.AssetKey(k.path[-1]): k for a in assets for k in a.keys}
    return [a.with_attributes(asset_key_replacements=replace) for a in assets]


def build_dataset_defs(spec: DatasetSpec, settings: Settings, executor: dg.ExecutorDefinition) -> dg.Definitions:
    """One dataset's assets, checks, jobs, sensor and schedules, every name carrying the dataset's."""
    domains = dg.Definitions.merge(
        build_ingestion(spec, settings),
        build_features(spec, settings),
        build_monitoring(spec, settings),
        build_training(spec, settings),
        build_registry(spec, settings),
        build_serving(spec, settings),
    )
    assets = _prefixed(domains)

    def select(asset_names: list[str]) -> dg.AssetSelection:
        return dg.AssetSelection.assets(*(names.asset_key(spec.name, n) for n in asset_names))

    tags = {TAG_DATASET: spec.name}
    daily_job = dg.define_asset_job(
        names.job_name(spec.name, "daily_job"),
        selection=select(DAILY_ASSETS),
        partitions_def=daily_partitions(spec),
        executor_def=executor,
        description=f"{spec.name}: one day through ingestion, features, monitoring and batch predictions.",
        tags={"mlops/daily": spec.name},
    )
    retrain_job = dg.define_asset_job(
        names.job_name(spec.name, RETRAIN_JOB),
        selection=select(TRAINING_ASSETS),
        executor_def=executor,
        description=f"{spec.name}: training set, sweep, evaluation, registration and the promotion gate.",
        tags=tags,
    )
    bootstrap_job = dg.define_asset_job(
        names.job_name(spec.name, "bootstrap_job"),
        selection=select(BOOTSTRAP_ASSETS),
        executor_def=executor,
        description=f"{spec.name}: side tables into the feature store and a baseline champion, once before the "
        "first day.",
    )
    daily_schedule = dg.build_schedule_from_partitioned_job(
        daily_job,
        hour_of_day=2,
        name=names.job_name(spec.name, "daily_monitoring_schedule"),
        description=f"{spec.name}: each day after midnight, the previous day through ingestion, monitoring and "
        "predictions.",
    )

    @dg.schedule(
        job=retrain_job,
        cron_schedule="0 4 * * 0",
        name=names.job_name(spec.name, "weekly_retrain_schedule"),
        description=f"{spec.name}: a periodic retrain every Sunday, whatever the monitors say; the gate still decides.",
    )
    def weekly_retrain(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        # Train as of the newest day whose labels have arrived (not the wall clock), and tag the run like the
        # sensor does so that its cool-down and weekly ceiling count this retrain too.
        as_of, total = labels_so_far(context.instance, spec.name)
        if as_of is None:
            return dg.SkipReason("no labels have arrived yet: nothing to retrain on")
        reason = f"weekly retrain as of {as_of}, whatever the monitors say; the gate still decides"
        return dg.RunRequest(
            run_key=f"weekly:{spec.name}:{as_of.isoformat()}",
            run_config=training_run_config(spec.name, as_of, "schedule"),
            tags=retrain_tags(spec, as_of, "schedule", reason, total),
        )

    return dg.Definitions.merge(
        build_registry_jobs(spec),
        dg.Definitions(
            assets=assets,
            jobs=[daily_job, retrain_job, bootstrap_job],
            schedules=[daily_schedule, weekly_retrain],
            sensors=[build_retrain_sensor(spec, jobs=[retrain_job, daily_job])],
        ),
    )


def build_defs(settings: Settings) -> dg.Definitions:
    """Every dataset the settings list, side by side, over one set of resources."""
    specs = [load_spec(p) for p in settings.spec_paths]
    seen: dict[str, str] = {}
    for path, spec in zip(settings.spec_paths, specs, strict=True):
        if spec.name in seen:
            raise ValueError(f"{path}: dataset name {spec.name!r} is already used by {seen[spec.name]}")
        seen[spec.name] = str(path)
    executor = build_executor(settings)
    return dg.Definitions.merge(
        *(build_dataset_defs(spec, settings, executor) for spec in specs),
        dg.Definitions(resources=build_resources(settings), executor=executor),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs(Settings.from_env())
