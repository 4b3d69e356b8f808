"""The record of champion moves on a real MLflow registry (SQLite store): one tag per move, so that moves
made at the same time are all kept, and histories written by earlier versions are still read."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from mlops_assets.defs.resources import CHAMPION_HISTORY_TAG, ModelRegistryResource
from mlops_assets_tests.defs.registry.project import registry_with_versions

MODEL = "history_model"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ModelRegistryResource]:
    yield registry_with_versions(tmp_path, MODEL, 3)


def test_moves_are_recorded_in_order_with_where_the_alias_was(registry: ModelRegistryResource) -> None:
    registry.move_champion(MODEL, "1", reason="first model", actor="sensor", kind="baseline")
    registry.move_champion(MODEL, "2", reason="better by 0.01", actor="sensor", data_day="2013-03-01")
    registry.move_champion(MODEL, "1", reason="bad in production", actor="alice", kind="rollback")
    history = registry.history(MODEL)
    assert [(h["version"], h["previous"], h["kind"], h["actor"]) for h in history] == [
        ("1", None, "baseline", "sensor"),
        ("2", "1", "promote", "sensor"),
        ("1", "2", "rollback", "alice"),
    ]
    assert registry.champion_info(MODEL).version == "1"  # type: ignore[union-attr]


def test_two_moves_at_the_same_moment_are_both_kept_one_after_the_other(
    registry: ModelRegistryResource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two movers start together and each write is slowed down, so without the champion lock the second
    would read the alias while the first is between its writes. With it, both moves are kept and the second
    one's `previous` is the first one's version: a chain, nothing lost."""
    registry.move_champion(MODEL, "1", reason="first model", actor="sensor", kind="baseline")
    barrier = threading.Barrier(2, timeout=30)
    real = MlflowClient.set_registered_model_alias

    def slow(self: MlflowClient, name: str, alias: str, version: Any) -> None:
        time.sleep(0.3)
        real(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", slow)
    errors: list[BaseException] = []

    def move(version: str, actor: str) -> None:
        try:
            barrier.wait()
            registry.move_champion(MODEL, version, reason="approved", actor=actor, kind="approve")
        except BaseException as exc:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=move, args=(v, a)) for v, a in (("2", "alice"), ("3", "bob"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    history = registry.history(MODEL)
    assert len(history) == 3
    assert {(h["version"], h["actor"]) for h in history[1:]} == {("2", "alice"), ("3", "bob")}
    assert [h["previous"] for h in history] == [None, "1", history[1]["version"]]
    assert registry.champion_info(MODEL).version == history[2]["version"]  # type: ignore[union-attr]


def test_a_history_kept_by_an_earlier_version_comes_first(registry: ModelRegistryResource) -> None:
    old = [{"version": "1", "previous": None, "kind": "baseline", "reason": "first", "actor": "sensor"}]
    registry.client.set_registered_model_alias(MODEL, "champion", "1")
    registry.client.set_registered_model_tag(MODEL, CHAMPION_HISTORY_TAG, json.dumps(old))
    registry.move_champion(MODEL, "2", reason="better", actor="sensor")
    history = registry.history(MODEL)
    assert [(h["version"], h["previous"]) for h in history] == [("1", None), ("2", "1")]
    assert json.loads(registry.client.get_registered_model(MODEL).tags[CHAMPION_HISTORY_TAG]) == old  # untouched


def test_a_model_never_registered_has_no_history(registry: ModelRegistryResource) -> None:
    assert registry.history("no_such_model") == []
