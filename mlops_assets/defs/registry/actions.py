"""Approve and roll back: the two things a person does to the champion by hand, from the UI or the CLI."""

from __future__ import annotations

from mlops_assets.defs.resources import ModelRegistryResource


class RegistryActionError(RuntimeError):
    pass


def approve(registry: ModelRegistryResource, model_name: str, version: str, *, actor: str) -> str:
    """Promote a version the gate left waiting for a person."""
    mv = registry.client.get_model_version(model_name, version)
    gate = mv.tags.get("mlops.gate")
    if gate != "pending_approval":
        raise RegistryActionError(f"{model_name} v{version} is not waiting for approval (gate: {gate})")
    registry.move_champion(model_name, version, reason=f"approved by {actor}", actor=actor)
    registry.client.set_model_version_tag(model_name, version, "mlops.gate", "approved")
    return f"{model_name}: champion is now v{version} (approved by {actor})"


def rollback(registry: ModelRegistryResource, model_name: str, *, actor: str, reason: str) -> str:
    """Move the alias back to the version it named before the last move, and record who and why."""
    current = registry.champion(model_name)
    if current is None:
        raise RegistryActionError(f"{model_name} has no champion to roll back")
    history = registry.history(model_name)
    moves_to_current = [h for h in history if h["version"] == str(current.version) and h.get("previous")]
    if not moves_to_current:
        raise RegistryActionError(f"{model_name} v{current.version} has no earlier champion to go back to")
    previous = moves_to_current[-1]["previous"]
    registry.move_champion(model_name, previous, reason=f"rollback from v{current.version}: {reason}", actor=actor)
    registry.client.set_model_version_tag(model_name, str(current.version), "mlops.gate", "rolled_back")
    return f"{model_name}: champion rolled back from v{current.version} to v{previous} ({reason})"
