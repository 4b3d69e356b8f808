"""The source manifest: every file a folder or S3 source has shown us, by checksum, with the days it holds.

Without it a day cannot know which files hold its rows (a file's name says nothing about its days), so every
day would read every file: day 400 of a folder of daily drops would cost 400 times day 1. With it, a file is
read whole once, when it first appears or changes, and after that only on the days it holds.

A file is recognised by its name and (size, mtime); when either changes, its checksum decides: the same bytes
(a copy, a `touch`) keep their entry, different bytes are read whole again. What an entry records depends on
the spec's event time and days, so the manifest carries a fingerprint of them and starts over when they change.

It lives beside the lake (`manifests/<dataset>/source.json`, local folder or S3), so every worker of a
deployment shares it. Unlike the lake's data it is an index, rewritten as files arrive: losing it, or losing an
update to a concurrent run, only costs reading some files whole again, never a wrong day.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from mlops_assets.config import DatasetSpec
from mlops_assets.datasets.sources import SourceFile, file_sha256
from mlops_assets.storage.lake import Backend

VERSION = 2
AREA = "manifests"

# Per process, by the manifest's address: the bytes last read or written with what they parse to, and each
# entry's JSON text. A replay's days (and a worker's runs) open the same manifest again and again; with these a
# day parses and serializes only the entries that changed, so day 400 of daily drops costs what day 1 does.
_PARSED: dict[str, tuple[bytes, dict[str, dict[str, Any]]]] = {}
_TEXT: dict[str, tuple[dict[str, Any], str]] = {}


def fingerprint(spec: DatasetSpec) -> str:
    """What an entry's days depend on: the source, the event time, the types it is computed from, the days."""
    what = {
        "version": VERSION,
        "source": spec.source.model_dump(),
        "event_time": spec.event_time,
        "schema": {c: r.type for c, r in spec.schema_.items()},
        "days": [spec.replay.start.isoformat(), spec.replay.end.isoformat()],
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def manifest_key(dataset: str) -> str:
    return f"{AREA}/{dataset}/source.json"


# what is stored per file: the key is its name, and its columns come from the scan of the day that reads it
_FIELDS = tuple(f.name for f in dataclasses.fields(SourceFile) if f.name not in ("local", "path", "columns"))


def _entry(raw: dict[str, Any]) -> SourceFile:
    return SourceFile(path="", **{k: v for k, v in raw.items() if k in _FIELDS})


def _raw(info: SourceFile) -> dict[str, Any]:
    # by hand, not dataclasses.asdict: that deep-copies every value, and a day saves hundreds of entries
    return {k: getattr(info, k) for k in _FIELDS}


def _member(name: str, raw: dict[str, Any]) -> str:
    """An entry as the `"name":{...}` member of the stored object, serialized once per version of the entry."""
    cached = _TEXT.get(name)
    if cached is not None and cached[0] is raw:
        return cached[1]
    text = f"{json.dumps(name)}:{json.dumps(raw, separators=(',', ':'))}"
    _TEXT[name] = (raw, text)
    return text


class SourceManifest:
    """Entries by file name (a path, or an s3:// URI), loaded once, saved once per delivery when they changed.
    Without a backend it lives in memory only (every file is then read whole on each use).

    Entries are kept as the JSON mappings they are stored as, and made into SourceFile only when asked for:
    a day touches every entry (to check its file's size and mtime), so each must cost microseconds."""

    def __init__(self, spec: DatasetSpec, backend: Backend | None = None) -> None:
        self.key = manifest_key(spec.name)
        self.fingerprint = fingerprint(spec)
        self.backend = backend
        self.address = f"{backend.uri(self.key)}#{self.fingerprint}" if backend is not None else ""
        self.loaded = b""  # the bytes loaded: a save re-parses the stored manifest only if another run changed it
        self.entries: dict[str, dict[str, Any]] = self._load() if backend is not None else {}
        self.changed: set[str] = set()
        self.removed: set[str] = set()

    def _load(self, *, unless_unchanged: bool = False) -> dict[str, dict[str, Any]]:
        assert self.backend is not None
        try:
            data = self.backend.get(self.key)
            if unless_unchanged and data == self.loaded:
                return self.entries
            self.loaded = data
            cached = _PARSED.get(self.address)
            if cached is not None and cached[0] == data:
                return dict(cached[1])  # entries are replaced, never changed in place: a shallow copy is enough
            doc = json.loads(data)
        except (ValueError, OSError, KeyError):  # none yet, or a torn or foreign file: start over, it is an index
            return {}
        except Exception as exc:  # S3's "no such key" is a botocore ClientError; anything else is a real failure
            if "NoSuchKey" in str(exc) or "Not Found" in str(exc) or "404" in str(exc):
                return {}
            raise
        if not isinstance(doc, dict) or doc.get("fingerprint") != self.fingerprint:
            return {}
        files = doc.get("files", {})
        if not isinstance(files, dict):
            return {}
        _PARSED[self.address] = (data, files)
        return dict(files)

    def elsewhere(self, name: str, size: int, mtime_ns: int, day: str) -> bool:
        """True when the file (of this size and mtime, from the listing) is as the manifest knows it and has
        nothing for `day`: no rows of it, no problem that blocks it, and rows of some day (a file with none is
        named when a day has no rows; `day` is ISO). The fast path of every file on every day: a few lookups."""
        raw = self.entries.get(name)
        if raw is None or raw["problem"] or not raw["days"] or day in raw["days"]:
            return False
        return raw["size"] == size and raw["mtime_ns"] == mtime_ns

    def days_held(self) -> set[str]:
        return {d for raw in self.entries.values() for d in raw.get("days", {})}

    def current(self, name: str, local: Path) -> SourceFile | None:
        """The entry for the file as it is now, or None when it is new or its bytes changed (read it whole)."""
        raw = self.entries.get(name)
        if raw is None:
            return None
        st = local.stat()
        if (raw.get("size"), raw.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
            if st.st_size != raw.get("size") or file_sha256(local) != raw.get("sha256"):
                return None
            raw = {**raw, "mtime_ns": st.st_mtime_ns}  # same bytes, new timestamp: the entry stands
            self.entries[name] = raw
            self.changed.add(name)
        entry = _entry(raw)
        entry.path = str(local)
        entry.days = dict(entry.days)
        return entry

    def record(self, name: str, info: SourceFile) -> None:
        new = _raw(info)
        new["days"] = dict(info.days)
        if self.entries.get(name) != new:
            self.entries[name] = new
            self.changed.add(name)

    def prune(self, present: set[str]) -> None:
        """Forget files that left the source (a day no longer reads them)."""
        for name in [n for n in self.entries if n not in present]:
            del self.entries[name]
            self.removed.add(name)

    def save(self) -> None:
        """Write the manifest if it changed, merged over what another run may have written meanwhile."""
        if self.backend is None or not (self.changed or self.removed):
            return
        merged = dict(self._load(unless_unchanged=True))
        for name in self.removed:
            merged.pop(name, None)
        for name in self.changed:
            if name in self.entries:
                merged[name] = self.entries[name]
        self.entries = merged
        files = ",".join([_member(name, raw) for name, raw in merged.items()])
        self.loaded = f'{{"fingerprint":{json.dumps(self.fingerprint)},"files":{{{files}}}}}'.encode()
        self.backend.put(self.key, self.loaded)
        _PARSED[self.address] = (self.loaded, dict(merged))
        self.changed.clear()
        self.removed.clear()
