"""Loads the one Definitions object the UI loads, and pins what it exposes."""

from __future__ import annotations

import dagster as dg

from mlops_assets.config import SPECS_DIR, Settings
from mlops_assets.definitions import build_defs
from mlops_assets_tests.conftest import akey, job

ASSETS = {
    "lookup_tables",
    "raw_batches",
    "labels",
    "features",
    "drift_report",
    "performance_report",
    "training_dataset",
    "candidate_models",
    "evaluation_report",
    "baseline_model",
    "registered_model_version",
    "champion",
    "batch_predictions",
}
DAILY = {"raw_batches", "labels", "features", "drift_report", "performance_report", "batch_predictions"}


def test_definitions_load_and_expose_the_whole_graph(flights_settings: Settings) -> None:
    defs = build_defs(flights_settings)
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    keys = {k for k in graph.get_all_asset_keys()}
    assert keys == {akey(a) for a in ASSETS}
    for key in DAILY:
        assert isinstance(graph.get(akey(key)).partitions_def, dg.DailyPartitionsDefinition), key
    checks = {(c.asset_key, c.name) for c in graph.asset_check_keys}
    assert {
        (akey("raw_batches"), "delivery_valid"),
        (akey("raw_batches"), "quarantine_share"),
        (akey("features"), "features_complete"),
        (akey("features"), "features_null_share"),
        (akey("champion"), "champion_loads"),
    } <= checks
    assert {j.name for j in repo.get_all_jobs()} >= {
        job("daily_job"),
        job("retrain_job"),
        job("bootstrap_job"),
        job("approve_job"),
        job("rollback_job"),
    }
    assert {s.name for s in repo.schedule_defs} == {job("daily_monitoring_schedule"), job("weekly_retrain_schedule")}
    assert [s.name for s in repo.sensor_defs] == [job("retrain_sensor")]
    # lineage the UI shows: reports feed nothing but the sensor; the champion feeds serving and monitoring
    assert akey("champion") in graph.get(akey("batch_predictions")).parent_keys
    assert akey("features") in graph.get(akey("drift_report")).parent_keys


def test_every_asset_has_a_description_group_and_kind(flights_settings: Settings) -> None:
    graph = build_defs(flights_settings).get_repository_def().asset_graph
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description, key
        assert node.group_name in {
            "ingestion",
            "features",
            "monitoring",
            "training",
            "registry",
            "serving",
        }, key
        assert node.kinds, key


def test_the_module_entry_point_loads(flights_settings: Settings) -> None:
    from mlops_assets import definitions

    loaded = definitions.defs()
    assert isinstance(loaded, dg.Definitions)


def test_datasets_sit_side_by_side_in_one_deployment(flights_settings: Settings) -> None:
    """Two specs, one Definitions: each dataset's assets, checks, jobs, sensor and schedules under its own
    name, and no dependency crossing from one dataset to the other."""
    both = flights_settings.model_copy(
        update={"spec_paths": (flights_settings.spec_path, SPECS_DIR / "chicago_ridership.yaml")}
    )
    repo = build_defs(both).get_repository_def()
    graph = repo.asset_graph
    for dataset in ("flights", "chicago_ridership"):
        mine = {k for k in graph.get_all_asset_keys() if k.path[0] == dataset}
        assert mine == {akey(a, dataset) for a in ASSETS}
        for key in mine:
            assert all(p.path[0] == dataset for p in graph.get(key).parent_keys), key
        assert job("retrain_sensor", dataset) in {s.name for s in repo.sensor_defs}
        assert repo.get_job(job("daily_job", dataset)).partitions_def is not None
        retrain = repo.get_job(job("retrain_job", dataset))
        assert retrain.tags["mlops/dataset"] == dataset  # the run queue's per-dataset limit reads this tag
    checks_per_dataset = {c.name for c in graph.asset_check_keys if c.asset_key.path[0] == "flights"}
    assert len(graph.asset_check_keys) == 2 * len(checks_per_dataset)


def test_two_specs_with_the_same_name_are_refused(flights_settings: Settings) -> None:
    twice = flights_settings.model_copy(update={"spec_paths": (flights_settings.spec_path,) * 2})
    try:
        build_defs(twice)
    except ValueError as exc:
        assert "already used" in str(exc)
    else:
        raise AssertionError("two datasets named alike would share keys and runs")
