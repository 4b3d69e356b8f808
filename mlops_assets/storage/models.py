"""Model artifacts with integrity: a checksum recorded at registration is verified before every load.

A model file that changed after it was registered (a bad copy, a tampered bucket) must fail loudly rather
than serve predictions, so loading goes through here and nowhere else.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
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


def artifact_digest(model_uri: str, tracking_uri: str, *, logged: Any = None) -> str:
    """The checksum recorded at registration: taken from the stored artifact, not the in-memory model.

    `logged` is the fitted object just written to that artifact (MLflow's save has already round-tripped it
    through skops): it is kept as what those bytes deserialize to, so the steps after (the gate, the
    registration's scorer proof, the champion's check) verify the stored bytes but do not deserialize them
    again in this process."""
    with downloaded(model_uri, tracking_uri) as local:
        digest = directory_digest(local)
    if logged is not None:
        _DESERIALIZED.put(digest, logged)
    return digest


@dataclass(frozen=True)
class VerifiedModel:
    uri: str
    sha256: str
    model: Any


class _ByDigest:
    """Deserialized models by the checksum of their artifact's bytes, least recently used first. A model
    reaches the same process under several URIs (its logged-model URI, then `models:/name/version`); the bytes
    are verified under each, but deserialized (skops: ~0.1-0.3 s for a boosted model) once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.models: OrderedDict[str, Any] = OrderedDict()
        self.lock = threading.Lock()  # the online API's model watcher loads beside the request threads

    def get(self, digest: str) -> Any:
        with self.lock:
            if digest not in self.models:
                return None
            self.models.move_to_end(digest)
            return self.models[digest]

    def put(self, digest: str, model: Any) -> None:
        with self.lock:
            self.models[digest] = model
            self.models.move_to_end(digest)
            while len(self.models) > self.size:
                self.models.popitem(last=False)

    def clear(self) -> None:
        with self.lock:
            self.models.clear()


_DESERIALIZED = _ByDigest(8)


@lru_cache(maxsize=16)
def load_verified(model_uri: str, expected_sha256: str, tracking_uri: str) -> VerifiedModel:
    """Download, verify, then load. Cached by (uri, checksum): a daily tick reuses the champion in memory; a
    URI seen for the first time is always downloaded and verified, its bytes deserialized only if no model
    with the same checksum is already in memory."""
    from mlops_assets.ml.models import load_model

    with downloaded(model_uri, tracking_uri) as local:
        digest = directory_digest(local)
        if digest != expected_sha256:
            raise ArtifactIntegrityError(
                f"{model_uri}: artifact checksum {digest[:12]}… does not match the {expected_sha256[:12]}… "
                "recorded at registration; refusing to load it"
            )
        model = _DESERIALIZED.get(digest)
        if model is None:
            model = load_model(str(local))
            _DESERIALIZED.put(digest, model)
        return VerifiedModel(model_uri, digest, model)


def forget_loaded() -> None:
    """Forget everything verified or deserialized in this process, as a fresh process starts."""
    load_verified.cache_clear()
    _DESERIALIZED.clear()
