"""MLflow's process-wide state against a worker process that serves several datasets in turn."""

from pathlib import Path

import mlflow
import pytest

from mlops_assets.defs.resources import ensure_experiment, mlflow_client, nested_run, reopened_run


def test_a_run_reopens_while_another_datasets_experiment_is_active(tmp_path: Path) -> None:
    """What a Celery worker saw: dataset A's retrain logged, then B's baseline made B's experiment the
    active one, then A's evaluation reopened A's run to log its served fit. Plain `start_run(run_id=)`
    refuses; the helper does not, and the metric lands in A's run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    art = str(tmp_path / "art")
    mlflow.set_tracking_uri(uri)
    a, b = ensure_experiment(uri, "a", art), ensure_experiment(uri, "b", art)
    with mlflow.start_run(experiment_id=a) as run:
        mlflow.log_metric("first", 1.0)
    mlflow.set_experiment(experiment_id=b)
    try:
        with (
            pytest.raises(mlflow.exceptions.MlflowException, match="active experiment"),
            mlflow.start_run(run_id=run.info.run_id),
        ):
            pass
        with reopened_run(uri, run.info.run_id):
            mlflow.log_metric("second", 2.0)
    finally:
        mlflow.set_experiment(experiment_id=a)  # leave no foreign experiment active for other tests
    logged = mlflow_client(uri).get_run(run.info.run_id)
    assert logged.info.experiment_id == a
    assert logged.data.metrics == {"first": 1.0, "second": 2.0}


def test_a_trial_lands_in_its_sweeps_experiment_whatever_experiment_is_active(tmp_path: Path) -> None:
    """MLflow files a nested run under the process's active experiment, not its parent's: with none set, or
    another dataset's, a sweep's trials would leave its experiment."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    art = str(tmp_path / "art")
    mlflow.set_tracking_uri(uri)
    a, b = ensure_experiment(uri, "a", art), ensure_experiment(uri, "b", art)
    mlflow.set_experiment(experiment_id=b)
    try:
        with mlflow.start_run(experiment_id=a) as sweep, nested_run("trial-00") as trial:
            mlflow.log_metric("auc", 0.7)
    finally:
        mlflow.set_experiment(experiment_id=a)
    child = mlflow_client(uri).get_run(trial.info.run_id)
    assert child.info.experiment_id == a
    assert child.data.tags["mlflow.parentRunId"] == sweep.info.run_id
    assert child.data.metrics == {"auc": 0.7}
    with pytest.raises(RuntimeError, match="no MLflow run active"), nested_run("orphan"):
        pass
