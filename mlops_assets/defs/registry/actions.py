"""Approve and roll back: the two things a person does to the champion by hand, from the UI or the CLI."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlops_assets.defs.resources import ChampionInfo, ModelRegistryResource
from mlops_assets.ml.promote import PromotionDecision


class RegistryActionError(RuntimeError):
    pass


def _verified(registry: ModelRegistryResource, info: ChampionInfo) -> None:
    """A version takes the alias only if its artifact still matches the checksum recorded at registration:
    a person's approval must not put a damaged model into production either."""
    try:
        registry.load_champion(info)
    except Exception as exc:
        raise RegistryActionError(f"{info.name} v{info.version} cannot become champion: {exc}") from exc


def is_rollback(move: dict[str, Any]) -> bool:
    """Moves recorded before `kind` existed are recognised by their reason."""
    return move.get("kind") == "rollback" or str(move.get("reason", "")).startswith("rollback from")


# A version the gate would have promoted had the champion not moved ("stale"), or that waits for a person:
# approving re-runs the gate against the champion of the moment. With force, a person may also overrule a
# rejection; the reason is recorded with the move.
APPROVABLE = ("pending_approval", "stale")
FORCE_APPROVABLE = (*APPROVABLE, "rejected")

# The re-run gate: (the version to approve, the champion now or None) -> the decision.
RerunGate = Callable[[ChampionInfo, ChampionInfo | None], PromotionDecision]


def approve(
    registry: ModelRegistryResource,
    model_name: str,
    version: str,
    *,
    actor: str,
    rerun_gate: RerunGate,
    force: bool = False,
    force_reason: str = "",
) -> str:
    """Promote a version the gate left waiting for a person, if it still passes the gate against the current
    champion.

    The version was judged against the champion of its retrain, maybe weeks ago, on a hold-out that has
    aged since; approving it blindly would promote it against a champion it was never compared with. So the
    approval re-runs the same gate (`rerun_gate`) against the champion now and moves the alias only if that
    champion is still in place when the move happens (compare-and-set). `force` skips the re-run for a
    person who knows better than the gate; it needs a reason, which the move's history keeps."""
    if force and not force_reason.strip():
        raise RegistryActionError("approve with force needs a reason: it is recorded with the move")
    info = registry.version_info(model_name, version)
    if info is None:
        raise RegistryActionError(f"{model_name} has no version {version!r}: nothing to approve")
    gate = info.tags.get("mlops.gate")
    if gate not in (FORCE_APPROVABLE if force else APPROVABLE):
        raise RegistryActionError(f"{model_name} v{version} is not waiting for approval (gate: {gate})")
    current = registry.champion_info(model_name)
    if current is not None and current.version == info.version:
        raise RegistryActionError(f"{model_name} v{version} is already the champion")
    _verified(registry, info)
    against = f"v{current.version}" if current is not None else "no champion"
    extra: dict[str, Any]
    if force:
        reason = f"forced by {actor} without re-running the gate (champion was {against}): {force_reason}"
        extra = {"forced": True, "force_reason": force_reason[:1000]}
    else:
        decision = rerun_gate(info, current)
        if not decision.promote:
            raise RegistryActionError(
                f"{model_name} v{version} no longer passes the gate against the champion ({against}): "
                f"{decision.reason}. Not promoted; approve with force and a reason to overrule the gate."
            )
        reason = f"approved by {actor}; gate re-run against {against}: {decision.reason}"
        extra = {"gate_rerun": "passed"}
    outcome = registry.move_champion(
        model_name,
        info.version,
        reason=reason,
        actor=actor,
        kind="approve",
        expected_previous=current.version if current is not None else None,
        extra=extra,
    )
    if not outcome.moved:
        raise RegistryActionError(f"{outcome.reason}; approve again to judge it against the new champion")
    registry.client.set_model_version_tag(model_name, info.version, "mlops.gate", "approved")
    registry.client.set_model_version_tag(model_name, info.version, "mlops.approved_by", actor)
    if force:
        return f"{model_name}: champion is now v{info.version} (approved by {actor}, forced: {force_reason})"
    return f"{model_name}: champion is now v{info.version} (approved by {actor})"


def rollback(registry: ModelRegistryResource, model_name: str, *, actor: str, reason: str) -> str:
    """Move the alias back to the version it named before the current champion was promoted, and record who
    and why. Rollback moves are skipped when looking for that version: otherwise a second rollback would
    undo the first and put the version just rolled back from into production again."""
    current = registry.champion(model_name)
    if current is None:
        raise RegistryActionError(f"{model_name} has no champion to roll back")
    forward = [h for h in registry.history(model_name) if h["version"] == str(current.version) and not is_rollback(h)]
    if not forward or not forward[-1].get("previous"):
        raise RegistryActionError(f"{model_name} v{current.version} has no earlier champion to go back to")
    previous = str(forward[-1]["previous"])
    target = registry.version_info(model_name, previous)
    if target is None:
        raise RegistryActionError(f"{model_name} v{previous} (the earlier champion) is no longer in the registry")
    _verified(registry, target)
    outcome = registry.move_champion(
        model_name,
        previous,
        reason=f"rollback from v{current.version}: {reason}",
        actor=actor,
        kind="rollback",
        expected_previous=str(current.version),  # a rollback undoes this champion, not one that replaced it since
    )
    if not outcome.moved:
        raise RegistryActionError(f"{model_name}: {outcome.reason}")
    registry.client.set_model_version_tag(model_name, str(current.version), "mlops.gate", "rolled_back")
    return f"{model_name}: champion rolled back from v{current.version} to v{previous} ({reason})"
