"""A person's approval and a rollback, through the real CLI, on a real retrain of the flights data.

With `gate.require_approval: true` the first trained model (which beats the baseline) waits as pending;
`mlops-assets approve` promotes it through `approve_job`, `mlops-assets rollback` moves the alias back through
`rollback_job`; both record who and why, and the champion asset's latest materialization shows the history.
The tests run in order on one module-scoped world, as a person would act on one registry.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import mlflow
import pytest

from mlops_assets.cli import main as cli_main
from mlops_assets.config import Settings, load_spec
from mlops_assets.defs.monitoring.sensors import training_run_config
from mlops_assets.defs.registry.actions import RegistryActionError
from mlops_assets.defs.registry.jobs import run_registry_action
from mlops_assets.defs.resources import ModelRegistryResource
from mlops_assets.replay import QUIET
from mlops_assets_tests.conftest import akey, job
from mlops_assets_tests.defs.registry.project import MODEL, bootstrap_and_ingest, isolated_project

FIRST_DAY = dt.date(2013, 1, 1)
AS_OF = dt.date(2013, 1, 9)


@dataclass
class World:
    settings: Settings
    registry: ModelRegistryResource
    baseline: str
    challenger: str


def champion_version(world: World) -> str:
    info = world.registry.champion_info(MODEL)
    assert info is not None
    return info.version


def champion_event_metadata() -> dict[str, Any]:
    """The newest materialization of the champion asset, as the UI's asset page shows it."""
    with dg.DagsterInstance.get() as instance:
        ev = instance.get_latest_materialization_event(akey("champion"))
    assert ev is not None and ev.asset_materialization is not None
    return {k: getattr(v, "value", v) for k, v in ev.asset_materialization.metadata.items()}


def last_run(job: str) -> dg.DagsterRun:
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=job), limit=1)
    assert runs, f"no {job} run"
    return runs[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with isolated_project(tmp_path_factory.mktemp("approve"), gate={"require_approval": True}) as project:
        with dg.DagsterInstance.get() as instance:
            baseline = bootstrap_and_ingest(project, instance, AS_OF)
            res = project.defs.resolve_job_def(job("retrain_job")).execute_in_process(
                instance=instance, run_config={**training_run_config("flights", AS_OF, "manual"), **QUIET}
            )
            mlflow.end_run()
        assert res.success
        challenger = res.output_for_node(job("registered_model_version"))["version"]
        yield World(project.settings, project.registry, baseline, str(challenger))


def test_a_better_challenger_waits_as_pending_and_the_champion_stays(world: World) -> None:
    mv = world.registry.client.get_model_version(MODEL, world.challenger)
    assert mv.tags["mlops.gate"] == "pending_approval"
    assert "waiting for a person's approval" in mv.tags["mlops.gate_reason"]
    assert champion_version(world) == world.baseline
    md = champion_event_metadata()
    assert md["moved"] is False and md["gate"] == "pending_approval" and md["champion_version"] == world.baseline


def test_approving_an_unknown_or_not_pending_version_is_refused(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    history = world.registry.history(MODEL)
    assert cli_main(["approve", "999", "--actor", "alice"]) == 1
    assert "has no version '999'" in capsys.readouterr().err
    assert cli_main(["approve", world.baseline, "--actor", "alice"]) == 1
    assert "not waiting for approval (gate: first_model)" in capsys.readouterr().err
    assert champion_version(world) == world.baseline
    assert world.registry.history(MODEL) == history


def test_approve_promotes_the_pending_version_and_records_the_actor(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["approve", world.challenger, "--actor", "alice"]) == 0
    assert f"champion is now v{world.challenger} (approved by alice)" in capsys.readouterr().out
    assert champion_version(world) == world.challenger
    tags = world.registry.client.get_model_version(MODEL, world.challenger).tags
    assert tags["mlops.gate"] == "approved" and tags["mlops.approved_by"] == "alice"
    move = world.registry.history(MODEL)[-1]
    assert (move["version"], move["previous"], move["kind"], move["actor"]) == (
        world.challenger,
        world.baseline,
        "approve",
        "alice",
    )
    # The CLI went through approve_job: a run in the UI, and a champion materialization with the history.
    run = last_run(job("approve_job"))
    assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags["mlops/actor"] == "alice"
    md = champion_event_metadata()
    assert md["champion_version"] == world.challenger and md["last_move_actor"] == "alice"
    assert md["last_move_kind"] == "approve" and "alice" in md["history"]
    # Approving it again is refused: it is no longer pending.
    assert cli_main(["approve", world.challenger]) == 1
    assert "not waiting for approval (gate: approved)" in capsys.readouterr().err


def test_rollback_moves_the_alias_back_and_records_who_and_why(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = "late flights under-predicted at EWR"
    assert cli_main(["rollback", "--reason", reason, "--actor", "bob"]) == 0
    assert f"rolled back from v{world.challenger} to v{world.baseline}" in capsys.readouterr().out
    assert champion_version(world) == world.baseline
    assert world.registry.client.get_model_version(MODEL, world.challenger).tags["mlops.gate"] == "rolled_back"
    move = world.registry.history(MODEL)[-1]
    assert (move["version"], move["previous"], move["kind"], move["actor"]) == (
        world.baseline,
        world.challenger,
        "rollback",
        "bob",
    )
    assert reason in move["reason"]
    assert last_run(job("rollback_job")).status == dg.DagsterRunStatus.SUCCESS
    md = champion_event_metadata()
    assert md["champion_version"] == world.baseline and md["last_move_kind"] == "rollback"
    assert md["last_move_actor"] == "bob" and reason in md["last_move_reason"]
    # The history of moves, newest first: the rollback, the approval, the baseline.
    rows = [line for line in md["history"].splitlines() if line.startswith("|")][2:]
    assert [r.split("|")[1].strip() for r in rows] == [world.baseline, world.challenger, world.baseline]


def test_a_second_rollback_does_not_undo_the_first(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """The baseline never had a champion before it: there is nothing further back to go to. (Reading the
    last move to the current version blindly would find the rollback itself and go forward again.)"""
    history = json.dumps(world.registry.history(MODEL))
    assert cli_main(["rollback", "--reason", "again", "--actor", "bob"]) == 1
    assert f"v{world.baseline} has no earlier champion" in capsys.readouterr().err
    assert champion_version(world) == world.baseline
    assert json.dumps(world.registry.history(MODEL)) == history
    assert last_run(job("rollback_job")).status == dg.DagsterRunStatus.FAILURE, "the refusal is visible in the UI"


# The approval re-runs the gate against the champion of the moment. The champion is the baseline again here
# (the rollbacks above); versions are added as a retrain would leave them: copies of the trained challenger
# and of the baseline, waiting for a person.


def copy_version(world: World, of: str, gate: str) -> str:
    src = world.registry.client.get_model_version(MODEL, of)
    tags = {**src.tags, "mlops.gate": gate}
    mv = world.registry.client.create_model_version(MODEL, source=src.source, run_id=src.run_id, tags=tags)
    return str(mv.version)


def test_approve_re_runs_the_gate_against_the_current_champion(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """A version left `stale` (another run moved the alias after its evaluation) is approvable: the gate is
    run again, now against the baseline, and passes; the move says against which champion it was judged."""
    assert champion_version(world) == world.baseline
    again = copy_version(world, world.challenger, "stale")
    assert cli_main(["approve", again, "--actor", "carol"]) == 0
    assert f"champion is now v{again} (approved by carol)" in capsys.readouterr().out
    move = world.registry.history(MODEL)[-1]
    assert (move["version"], move["previous"], move["compared_with"]) == (again, world.baseline, world.baseline)
    assert move["gate_rerun"] == "passed" and f"gate re-run against v{world.baseline}" in move["reason"]
    assert "better" in move["reason"] or "beats the baseline" in move["reason"], "the gate's numbers are kept"
    assert last_run(job("approve_job")).tags["mlops/dataset"] == load_spec(world.settings.spec_path).name


def test_approving_a_worse_version_is_refused_by_the_re_run_gate(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """A version that waited for approval while a better champion took over (here: the baseline model,
    registered again) is judged against that champion and refused; nothing moves."""
    champion = champion_version(world)
    worse = copy_version(world, world.baseline, "pending_approval")
    history = world.registry.history(MODEL)
    assert cli_main(["approve", worse, "--actor", "carol"]) == 1
    err = capsys.readouterr().err
    assert f"v{worse} no longer passes the gate against the champion (v{champion})" in err
    assert "not better than the champion" in err and "force" in err
    assert champion_version(world) == champion and world.registry.history(MODEL) == history
    assert last_run(job("approve_job")).status == dg.DagsterRunStatus.FAILURE


def test_approve_with_force_skips_the_gate_and_records_the_reason(world: World) -> None:
    champion = champion_version(world)
    worse = max((str(v.version) for v in world.registry.client.search_model_versions(f"name='{MODEL}'")), key=int)
    with pytest.raises(RegistryActionError, match="needs a reason"):
        run_registry_action(world.settings, "approve_job", {"version": worse, "actor": "dave", "force": True})
    assert champion_version(world) == champion
    reason = "the hold-out week was a holiday; the baseline is safer until the new labels arrive"
    message = run_registry_action(
        world.settings,
        "approve_job",
        {"version": worse, "actor": "dave", "force": True, "force_reason": reason},
    )
    assert f"champion is now v{worse} (approved by dave, forced: {reason})" in message
    move = world.registry.history(MODEL)[-1]
    assert (move["version"], move["previous"], move["kind"], move["actor"]) == (worse, champion, "approve", "dave")
    assert move["forced"] is True and move["force_reason"] == reason and reason in move["reason"]
    assert "without re-running the gate" in move["reason"]
    md = champion_event_metadata()
    assert md["champion_version"] == worse and reason in md["last_move_reason"]
