"""The champion alias moves by compare-and-set on a real MLflow registry (SQLite store): only if it still names
the version the gate compared against. Then a race of several processes, each reading the champion (its
"evaluation"), waiting, and moving against what it read: the history is a chain with nothing lost, and no
move replaced a champion other than the one it was compared with."""

from __future__ import annotations

import itertools
import multiprocessing
import random
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlops_assets.defs.resources import ModelRegistryResource
from mlops_assets_tests.defs.registry.project import registry_with_versions

MODEL = "cas_model"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ModelRegistryResource]:
    yield registry_with_versions(tmp_path, MODEL, 4)


def champion(registry: ModelRegistryResource) -> str | None:
    info = registry.champion_info(MODEL)
    return info.version if info else None


def test_the_first_move_expects_no_champion(registry: ModelRegistryResource) -> None:
    refused = registry.move_champion(MODEL, "1", reason="r", actor="a", expected_previous="3")
    assert not refused.moved and refused.previous is None
    assert refused.reason == "champion moved from v3 to no champion since the evaluation; v1 not promoted"
    assert champion(registry) is None and registry.history(MODEL) == []

    first = registry.move_champion(MODEL, "1", reason="first", actor="a", kind="baseline", expected_previous=None)
    assert first.moved and first.previous is None and first.lock == "flock"
    assert champion(registry) == "1"
    (move,) = registry.history(MODEL)
    assert (move["version"], move["previous"], move["compared_with"]) == ("1", None, None)


def test_a_move_is_accepted_while_the_alias_still_names_the_compared_version(registry: ModelRegistryResource) -> None:
    registry.move_champion(MODEL, "1", reason="first", actor="a", kind="baseline", expected_previous=None)
    out = registry.move_champion(MODEL, "2", reason="better", actor="run-a", expected_previous="1")
    assert out.moved and (out.previous, out.expected) == ("1", "1")
    assert champion(registry) == "2"
    assert [(h["version"], h["previous"], h.get("compared_with")) for h in registry.history(MODEL)] == [
        ("1", None, None),
        ("2", "1", "1"),
    ]


def test_a_move_is_refused_when_the_alias_moved_since_the_evaluation(registry: ModelRegistryResource) -> None:
    """Run A and run B both compared their challengers with v1; A moved first. B's move must not happen: its
    challenger was never compared with A's."""
    registry.move_champion(MODEL, "1", reason="first", actor="a", kind="baseline", expected_previous=None)
    registry.move_champion(MODEL, "2", reason="better than v1", actor="run-a", expected_previous="1")
    history = registry.history(MODEL)
    refused = registry.move_champion(MODEL, "3", reason="better than v1", actor="run-b", expected_previous="1")
    assert not refused.moved and refused.decision == "stale" and refused.previous == "2"
    assert refused.reason == "champion moved from v1 to v2 since the evaluation; v3 not promoted"
    assert champion(registry) == "2" and registry.history(MODEL) == history
    # a no-champion expectation is refused as well once a champion exists
    late_baseline = registry.move_champion(MODEL, "4", reason="baseline", actor="b", expected_previous=None)
    assert not late_baseline.moved and "from no champion to v2" in late_baseline.reason


def _dispose_inherited_engines() -> None:
    """A forked child must not use the SQLite connections of its parent's pools (SQLAlchemy's advice:
    dispose without closing them, so the parent's stay valid)."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    for engine in list(SqlAlchemyStore._engine_map.values()):
        engine.dispose(close=False)


def _racer(uri: str, name: str, versions: list[str], go: str, seed: int, results: Any) -> None:
    """One mover: read the champion (the "evaluation"), take a while, move against what it read."""
    try:
        _moves(uri, name, versions, go, seed, results)
    except BaseException:  # the parent fails with the child's traceback instead of waiting for a result
        results.put({"error": traceback.format_exc()})


def _moves(uri: str, name: str, versions: list[str], go: str, seed: int, results: Any) -> None:
    _dispose_inherited_engines()
    reg = ModelRegistryResource(tracking_uri=uri, artifact_root="unused")
    rng = random.Random(seed)
    while not Path(go).exists():
        time.sleep(0.005)
    for v in versions:
        seen = reg.champion_info(name)
        time.sleep(rng.uniform(0, 0.03))
        expected = seen.version if seen else None
        res = reg.move_champion(
            name, v, reason=f"judged against {expected}", actor=f"racer{seed}", expected_previous=expected
        )
        results.put({"version": v, "expected": expected, "moved": res.moved, "previous": res.previous})


def test_racing_processes_leave_a_chain_of_moves_none_lost(registry: ModelRegistryResource, tmp_path: Path) -> None:
    """Four processes, each moving the alias three times against what it read; half the moves are expected
    to be refused. Every accepted move is in the history, in an order where each one's `previous` is the
    version the move before it set, and equals the champion the mover had read."""
    for _ in range(12):
        registry.client.create_model_version(MODEL, source=(tmp_path / "artifacts").as_uri())
    registry.move_champion(MODEL, "1", reason="first", actor="setup", kind="baseline", expected_previous=None)
    # Forked, not spawned: the children start at once instead of importing Dagster and MLflow for seconds.
    ctx = multiprocessing.get_context("fork")
    go = tmp_path / "go"
    queue = ctx.Queue()
    procs = [
        ctx.Process(
            target=_racer,
            args=(registry.tracking_uri, MODEL, [str(5 + 3 * i + k) for k in range(3)], str(go), i, queue),
            daemon=True,
        )
        for i in range(4)
    ]
    for p in procs:
        p.start()
    go.touch()
    results = []
    while len(results) < 12:
        results.append(queue.get(timeout=120))
        assert "error" not in results[-1], results[-1]["error"]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    history = registry.history(MODEL)
    accepted = [r for r in results if r["moved"]]
    assert len(history) == 1 + len(accepted), "a successful move is missing from the history"
    assert {h["version"] for h in history[1:]} == {r["version"] for r in accepted}
    for before, move in itertools.pairwise(history):
        assert move["previous"] == before["version"], f"a move was lost between {before} and {move}"
        assert move["previous"] == move["compared_with"], f"{move} replaced a champion it was not compared with"
    for r in results:
        assert r["moved"] == (r["previous"] == r["expected"]), r
    assert champion(registry) == history[-1]["version"]
    assert 1 <= len(accepted) < len(results), "the race produced no contention; the test proves nothing"
