"""From a registered version back to exactly the data and code that made it, on the real flights data.

One module-scoped world: a baseline champion, nine real days of January 2013 through ingestion and the
feature store, one real `retrain_job` (its first trained model becomes the champion), then two more days
ingested, so the training set is rebuilt from a store that has moved on since, as it would in production.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import mlflow
import pytest
from mlflow import MlflowClient

from mlops_assets.cli import main as cli_main
from mlops_assets.config import PROJECT_ROOT, Settings, load_spec
from mlops_assets.definitions import build_defs
from mlops_assets.defs.monitoring.assets import report_day
from mlops_assets.defs.monitoring.sensors import TAG_KIND, TAG_REASON, training_run_config
from mlops_assets.defs.registry.assets import code_version
from mlops_assets.defs.registry.gate import judge, judged_model
from mlops_assets.defs.resources import ChampionInfo, ModelRegistryResource
from mlops_assets.defs.training.assets import split_days
from mlops_assets.ml.automl import SearchSpace, window_rows
from mlops_assets.replay import QUIET
from mlops_assets.storage.lake import frame_to_parquet, sha256
from mlops_assets.storage.models import ArtifactIntegrityError, artifact_digest, load_verified
from mlops_assets.storage.stores import store_for
from mlops_assets_tests.conftest import job
from mlops_assets_tests.defs.registry.project import MODEL, bootstrap_and_ingest, ingest, isolated_project

TRAIN_AS_OF = dt.date(2013, 1, 9)
LATER_DAYS = [dt.date(2013, 1, 10), dt.date(2013, 1, 11)]


@dataclass
class World:
    settings: Settings
    registry: ModelRegistryResource
    champion: ChampionInfo
    baseline_version: str
    retrain_run_id: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with isolated_project(tmp_path_factory.mktemp("lineage")) as project:
        settings, defs, registry = project.settings, project.defs, project.registry
        with dg.DagsterInstance.get() as instance:
            baseline = bootstrap_and_ingest(project, instance, TRAIN_AS_OF)
            res = defs.resolve_job_def(job("retrain_job")).execute_in_process(
                instance=instance, run_config={**training_run_config("flights", TRAIN_AS_OF, "manual"), **QUIET}
            )
            mlflow.end_run()
            assert res.success
            champion = registry.champion_info(MODEL)
            assert champion is not None and not champion.is_baseline, "the first trained model beats the baseline"
            ingest(defs, instance, LATER_DAYS)
            yield World(settings, registry, champion, baseline, res.run_id)


def test_the_training_set_is_rebuilt_from_the_version_tags_alone(world: World) -> None:
    tags = world.registry.client.get_model_version(MODEL, world.champion.version).tags
    window = json.loads(tags["mlops.training_window"])
    as_of = dt.date.fromisoformat(tags["mlops.training_as_of"])
    since = dt.date.fromisoformat(window["since"]) if window["since"] else None
    assert as_of == TRAIN_AS_OF and window["as_of"] == TRAIN_AS_OF.isoformat()
    spec = load_spec(world.settings.spec_path)
    assert tags["mlops.spec_hash"] == spec.spec_hash, "the spec in force is the one that trained it"

    # The store has two more days of rows and labels than when the model was trained; an as-of rebuild
    # must still give the exact same bytes.
    rebuilt = store_for(world.settings, spec).training_frame(as_of, since)
    assert rebuilt["event_day"].max().date() < as_of and rebuilt["arrival_day"].max().date() <= as_of
    assert sha256(frame_to_parquet(rebuilt)) == tags["mlops.training_dataset_sha256"]
    stored = Path(world.settings.lake_uri) / tags["mlops.training_dataset_key"]
    assert sha256(stored.read_bytes()) == tags["mlops.training_dataset_sha256"]

    # Code: the commit this checkout runs (with -dirty while edits are uncommitted).
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert tags["mlops.code_version"] == code_version()
    if head.returncode == 0:
        assert tags["mlops.code_version"].startswith(head.stdout.strip())

    # The Dagster run that made it is in the instance, with the as-of it was given.
    assert tags["mlops.dagster_run_id"] == world.retrain_run_id
    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(tags["mlops.dagster_run_id"])
    assert run is not None and run.job_name == job("retrain_job") and run.status == dg.DagsterRunStatus.SUCCESS
    assert run.run_config["ops"][job("training_dataset")]["config"]["as_of"] == TRAIN_AS_OF.isoformat()


def test_the_version_has_a_signature_an_input_example_and_its_metrics(world: World) -> None:
    spec = load_spec(world.settings.spec_path)
    mlflow.set_tracking_uri(world.settings.mlflow_tracking_uri)
    info = mlflow.models.get_model_info(world.champion.model_uri)
    assert info.signature is not None
    assert info.signature.inputs.input_names() == spec.feature_names
    assert info.saved_input_example_info is not None
    example = info.load_input_example() if hasattr(info, "load_input_example") else None
    if example is None:
        example = mlflow.models.Model.load(world.champion.model_uri).load_input_example()
    assert list(example.columns) == spec.feature_names and len(example) > 0
    tags = world.champion.tags
    assert 0.5 < float(tags["mlops.holdout_metric"]) < 1.0 and 0.5 < float(tags["mlops.valid_metric"]) < 1.0
    assert tags["mlops.metric"] == spec.metric and tags["mlops.gate"] == "first_model"
    assert tags["mlops.model_sha256"] == artifact_digest(world.champion.model_uri, world.settings.mlflow_tracking_uri)
    # proven at registration on the gate's hold-out: the online API may score it by the compiled path
    assert tags["mlops.scorer"] == "compiled", tags.get("mlops.scorer_reason")
    assert float(tags["mlops.scorer_max_abs_diff"]) <= 1e-6 and int(tags["mlops.scorer_rows"]) > 0


def test_the_sweep_and_every_trial_are_mlflow_runs_with_params_metrics_and_cost(world: World) -> None:
    client = MlflowClient(tracking_uri=world.settings.mlflow_tracking_uri)
    version = client.get_model_version(MODEL, world.champion.version)
    sweep_id = version.tags["mlops.sweep_run_id"]
    assert version.run_id == sweep_id
    sweep = client.get_run(sweep_id)
    assert sweep.data.tags["dagster_run_id"] == world.retrain_run_id
    assert sweep.data.params["as_of"] == TRAIN_AS_OF.isoformat()
    assert version.tags["mlops.training_dataset_sha256"].startswith(sweep.data.params["dataset_sha256"])
    for metric in ("best_roc_auc", "sweep_cpu_seconds", "sweep_wall_seconds"):
        assert metric in sweep.data.metrics, metric
    assert sweep.data.metrics["sweep_wall_seconds"] > 0

    trials = client.search_runs(
        [sweep.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{sweep_id}'", max_results=100
    )
    space = load_spec(world.settings.spec_path).search
    assert len(trials) == space["trials"]
    for t in trials:
        assert t.data.params["family"] in space["families"]
        assert t.data.tags["state"] in ("complete", "pruned", "failed")
        assert t.data.tags["dataset_sha256"] == version.tags["mlops.training_dataset_sha256"]
        assert {"wall_seconds", "cpu_seconds", "n_train"} <= set(t.data.metrics)
        assert t.data.metrics["wall_seconds"] >= 0 and t.data.metrics["cpu_seconds"] >= 0
    complete = [t for t in trials if t.data.tags["state"] == "complete"]
    assert complete and all("roc_auc" in t.data.metrics for t in complete)
    best = max(t.data.metrics["roc_auc"] for t in complete)
    assert sweep.data.metrics["best_roc_auc"] == pytest.approx(best)


def _stored_model_file(world: World, version: str) -> Path:
    """The serialized estimator as it sits in the artifact store (what a bad copy or a tampered bucket
    would change)."""
    uri = world.registry.client.get_model_version_download_uri(MODEL, version)
    root = Path(uri.removeprefix("file://"))
    files = list(root.rglob("*.skops"))
    assert len(files) == 1, files
    return files[0]


def _flip_a_byte(path: Path) -> bytes:
    original = path.read_bytes()
    middle = len(original) // 2
    path.write_bytes(original[:middle] + bytes([original[middle] ^ 0xFF]) + original[middle + 1 :])
    return original


def test_a_tampered_artifact_is_refused_before_it_is_loaded_and_the_champion_stays(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    champ = world.champion
    tracking = world.settings.mlflow_tracking_uri
    path = _stored_model_file(world, champ.version)
    original = _flip_a_byte(path)
    try:
        load_verified.cache_clear()  # a fresh process: nothing verified earlier is held in memory
        with pytest.raises(ArtifactIntegrityError, match=r"does not match .* recorded at registration; refusing"):
            load_verified(champ.model_uri, champ.model_sha256, tracking)
    finally:
        path.write_bytes(original)
    load_verified.cache_clear()
    assert load_verified(champ.model_uri, champ.model_sha256, tracking).sha256 == champ.model_sha256

    # A damaged earlier version cannot be brought back by a rollback: refused, and the champion stays.
    baseline_path = _stored_model_file(world, world.baseline_version)
    original = _flip_a_byte(baseline_path)
    try:
        load_verified.cache_clear()
        code = cli_main(["rollback", "--reason", "test a damaged target", "--actor", "tester"])
    finally:
        baseline_path.write_bytes(original)
    err = capsys.readouterr().err
    assert code == 1 and "cannot become champion" in err and "refusing to load it" in err
    after = world.registry.champion_info(MODEL)
    assert after is not None and (after.version, after.model_sha256) == (champ.version, champ.model_sha256)
    assert world.registry.history(MODEL)[-1]["version"] == champ.version


def test_a_refit_reuses_the_champion_recipe_through_the_same_gate_and_registry(world: World) -> None:
    """The cheap kind of retrain: the champion's family, hyper-parameters and window on the newest rows, judged
    by the same gate against the champion, registered with its kind and the reason that asked for it."""
    champ = world.registry.champion_info(MODEL)
    assert champ is not None and not champ.is_baseline
    defs = build_defs(world.settings)
    with dg.DagsterInstance.get() as instance:
        res = defs.resolve_job_def(job("retrain_job")).execute_in_process(
            instance=instance,
            run_config={**training_run_config("flights", LATER_DAYS[-1], "cost", "refit"), **QUIET},
            tags={TAG_KIND: "refit", TAG_REASON: "test: the staleness cost paid for a refit"},
        )
    mlflow.end_run()
    assert res.success
    cand = res.output_for_node(job("candidate_models"))
    assert cand["kind"] == "refit" and cand["trials"] == 0
    assert cand["family"] == champ.tags["mlops.family"] and cand["params"] == json.loads(champ.tags["mlops.params"])
    assert res.output_for_node(job("evaluation_report"))["champion_version"] == champ.version
    newest = max(world.registry.client.search_model_versions(f"name='{MODEL}'"), key=lambda v: int(v.version))
    assert newest.tags["mlops.retrain_kind"] == "refit"
    assert newest.tags["mlops.retrain_reason"] == "test: the staleness cost paid for a refit"
    # Judged as a refit of the champion's own recipe: it must only not be worse.
    md = {k: v.value for k, v in res.asset_materializations_for_node(job("evaluation_report"))[0].metadata.items()}
    assert md["refit_of_champion"] is True
    # a refit the gate passes gets its HTML on the monitoring cadence; any other evaluation gets one every time
    routine = md["promote"] and not report_day(load_spec(world.settings.spec_path), LATER_DAYS[-1])
    assert ("monitoring cadence" in str(md["evidently_report"])) == routine
    assert ("evidently_report_uri" in md) != routine


def test_the_gate_compares_with_the_champions_judged_fit_not_its_served_one(world: World) -> None:
    """The served champion has trained on part of any later hold-out and scores better there than it will on
    new rows; the gate compares a challenger with the fit it judged, which has seen none of it."""
    spec = load_spec(world.settings.spec_path)
    champ = world.champion
    holdout = split_days(store_for(world.settings, spec).training_frame(LATER_DAYS[-1]), spec)["holdout"]
    judged = judged_model(champ, world.registry)
    served = world.registry.load_champion(champ)
    assert judged is not served
    outcome = judge(spec, holdout.reset_index(drop=True), served, champ, world.registry)
    in_sample = outcome.comparison.challenger  # the served fit, scored on rows it partly trained on
    assert outcome.comparison.champion < in_sample, (outcome.comparison.champion, in_sample)
    same = judge(spec, holdout.reset_index(drop=True), judged, champ, world.registry)
    assert same.comparison.delta == 0.0


def test_the_promoted_recipe_serves_refit_on_every_row_and_the_judged_fit_is_kept(world: World) -> None:
    """The gate judged a fit on the rows before the hold-out; what registers and serves is the same recipe fit
    on every label arrived by `as_of`, in the same MLflow run, with both checksums and the bound on the tags."""
    tags = world.champion.tags
    assert tags["mlops.trained_through"] == TRAIN_AS_OF.isoformat()
    assert tags["mlops.judged_model_sha256"] != tags["mlops.model_sha256"] and tags["mlops.judged_model_uri"]
    assert "every labelled row through 2013-01-09" in tags["mlops.served_fit"]
    client = MlflowClient(tracking_uri=world.settings.mlflow_tracking_uri)
    version = client.get_model_version(MODEL, world.champion.version)
    run = client.get_run(tags["mlops.sweep_run_id"])
    rows = json.loads(tags["mlops.training_window"])
    assert rows["holdout"] and run.data.metrics["served_fit_rows"] > 0
    assert version.run_id == run.info.run_id, "registered from the retrain's own MLflow run"
    served = load_verified(world.champion.model_uri, tags["mlops.model_sha256"], world.settings.mlflow_tracking_uri)
    assert served.model is not None
    # every training row arrived by as_of, the hold-out's included, is what the served fit saw
    spec = load_spec(world.settings.spec_path)
    frame = store_for(world.settings, spec).training_frame(TRAIN_AS_OF)
    space = SearchSpace.from_dict(spec.search)
    window = tags["mlops.window_days"]
    days = int(float(window)) if window not in ("None", "") else None
    expected = window_rows(frame, "event_time", days, space.max_rows, space.seed)
    assert run.data.metrics["served_fit_rows"] == len(expected), "the recipe's window of every row, not the judged rows"
    judged = split_days(frame, spec)
    assert len(expected) > len(window_rows(judged["train"], "event_time", None)), "more rows than the train split"
    assert float(tags["mlops.cpu_seconds"]) >= run.data.metrics.get("served_fit_cpu_seconds", 0.0)
