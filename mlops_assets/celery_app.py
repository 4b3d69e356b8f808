"""The Celery app of the production workers: dagster-celery's own app and tasks, with the deployment's code
loaded once in the worker's main process, before it forks its pool.

With dagster-celery's plain app (`-A dagster_celery.app`) every pool process imports the code location on
its first step (about 10 CPU-seconds each: Dagster, scikit-learn, MLflow, Evidently), so a worker started
with `--concurrency=2` pays it twice and a run's first steps wait for it. Imported here, the forked pool
processes share the modules already in memory. Start a worker with

    dagster-celery worker start -A mlops_assets.celery_app -y deploy/celery.yaml -- --concurrency=2

Only modules are loaded (no connection, thread or file is opened), so forking afterwards is safe; each step
still builds its job from the code pointer it was sent, as with the plain app.
"""

from dagster_celery.app import app, execute_job, execute_plan, resume_job

import mlops_assets.definitions  # noqa: F401  (loaded for the forked pool processes, see above)

__all__ = ["app", "execute_job", "execute_plan", "resume_job"]
