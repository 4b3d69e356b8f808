"""Approve and roll back: the two things a person does to the champion by hand, from the UI or the CLI."""

from __future__ import annotations

from typing import Any

from mlops_assets.defs.resources import ChampionInfo, ModelRegistryResource


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


def approve(registry: ModelRegistryResource, model_name: str, version: str, *, actor: str) -> str:
    """Promote a version the gate left waiting for a person."""
    info = registry.version_info(model_name, version)
    if info is None:
        raise RegistryActionError(f"{model_name} has no version {version!r}: nothing to approve")
    gate = info.tags.get("mlops.gate")
    if gate != "pending_approval":
        raise RegistryActionError(f"{model_name} v{version} is not waiting for approval (gate: {gate})")
    _verified(registry, info)
    registry.move_champion(model_name, info.version, reason=f"approved by {actor}", actor=actor, kind="approve")
    registry.client.set_model_version_tag(model_name, info.version, "mlops.gate", "approved")
    registry.client.set_model_version_tag(model_name, info.version, "mlops.approved_by", actor)
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
    registry.move_champion(
        model_name, previous, reason=f"rollback from v{current.version}: {reason}", actor=actor, kind="rollback"
    )
    registry.client.set_model_version_tag(model_name, str(current.version), "mlops.gate", "rolled_back")
    return f"{model_name}: champion rolled back from v{current.version} to v{previous} ({reason})"
