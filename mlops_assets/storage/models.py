"""Model artifacts with integrity: a checksum recorded at registration is verified before every load.

A model file that changed after it was registered (a bad copy, a tampered bucket) must fail loudly rather
than serve predictions, so loading goes through here and nowhere else.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

# Written by MLflow itself when a model is fetched through models:/NAME/VERSION (it names the registry
# entry), so it differs by how the model was fetched, not by what the model is.
FETCH_METADATA_FILES = frozenset({"registered_model_meta"})
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class ArtifactIntegrityError(RuntimeError):
    pass


def directory_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes, in a stable order."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in FETCH_METADATA_FILES):
        h.update(str(path.relative_to(root)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


@contextmanager
def downloaded(model_uri: str, tracking_uri: str) -> Iterator[Path]:
    """The model's artifact directory, in a temporary folder removed afterwards."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="mlops-model-") as target:
        yield Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=target))


def artifact_digest(model_uri: str, tracking_uri: str) -> str:
    """The checksum recorded at registration: taken from the stored artifact, not the in-memory model."""
    with downloaded(model_uri, tracking_uri) as local:
        return directory_digest(local)


@dataclass(frozen=True)
class VerifiedModel:
    uri: str
    sha256: str
    model: Any


@lru_cache(maxsize=16)
def load_verified(model_uri: str, expected_sha256: str, tracking_uri: str) -> VerifiedModel:
    """Download, verify, then load. Cached by (uri, checksum): a daily tick reuses the champion in memory."""
    from mlops_assets.ml.models import load_model

    with downloaded(model_uri, tracking_uri) as local:
        digest = directory_digest(local)
        if digest != expected_sha256:
            raise ArtifactIntegrityError(
                f"{model_uri}: artifact checksum {digest[:12]}… does not match the {expected_sha256[:12]}… "
                "recorded at registration; refusing to load it"
            )
        return VerifiedModel(model_uri, digest, load_model(str(local)))
