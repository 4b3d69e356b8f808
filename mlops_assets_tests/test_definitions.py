"""Loads the one Definitions object the UI loads, and pins what it exposes."""

from __future__ import annotations

import dagster as dg

from mlops_assets.config import Settings
from mlops_assets.definitions import build_defs

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
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == ASSETS
    for key in DAILY:
        assert isinstance(graph.get(dg.AssetKey(key)).partitions_def, dg.DailyPartitionsDefinition), key
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    assert {
        ("raw_batches", "delivery_valid"),
        ("raw_batches", "quarantine_share"),
        ("features", "features_complete"),
        ("features", "features_null_share"),
        ("champion", "champion_loads"),
    } <= checks
    assert {j.name for j in repo.get_all_jobs()} >= {
        "daily_job",
        "retrain_job",
        "bootstrap_job",
        "approve_job",
        "rollback_job",
    }
    assert {s.name for s in repo.schedule_defs} == {"daily_monitoring_schedule", "weekly_retrain_schedule"}
    assert [s.name for s in repo.sensor_defs] == ["retrain_sensor"]
    # lineage the UI shows: reports feed nothing but the sensor; the champion feeds serving and monitoring
    assert dg.AssetKey("champion") in graph.get(dg.AssetKey("batch_predictions")).parent_keys
    assert dg.AssetKey("features") in graph.get(dg.AssetKey("drift_report")).parent_keys


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
