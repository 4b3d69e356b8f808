"""The data lake: immutable, content-addressed files on a local folder or an S3 bucket.

Raw data is never rewritten: every write goes to a new key named by the hash of its bytes, so a corrected
re-delivery of a day sits beside the original instead of replacing it, and a training set can always be
found again from the hash recorded in a model's lineage tags.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


class Backend(Protocol):
    def put(self, key: str, data: bytes) -> str: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...
    def uri(self, key: str) -> str: ...
    def link(self, key: str) -> str: ...


@dataclass
class LocalBackend:
    root: Path

    def _path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, data: bytes) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: a killed run never leaves half a file under the final name
        return str(path)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def uri(self, key: str) -> str:
        return str(self._path(key))

    def link(self, key: str) -> str:
        """What a person opens: the file itself, on the machine that holds the lake."""
        return self._path(key).resolve().as_uri()


@dataclass
class S3Backend:
    """Talks to S3 through a boto3 client (dagster-aws's S3Resource hands us one in production)."""

    client: Any
    bucket: str
    prefix: str = ""

    def _key(self, key: str) -> str:
        return f"{self.prefix.rstrip('/')}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> str:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        return self.uri(key)

    def get(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        return body

    def exists(self, key: str) -> bool:
        resp = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(key), MaxKeys=1)
        return any(o["Key"] == self._key(key) for o in resp.get("Contents", []))

    def list(self, prefix: str) -> list[str]:
        out: list[str] = []
        strip = len(self._key(""))
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            out += [o["Key"][strip:] for o in page.get("Contents", [])]
        return sorted(out)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def link(self, key: str) -> str:
        """A presigned HTTPS link (S3 caps them at 7 days): a report on the lake opens from the UI in a browser
        that has no S3 credentials; the permanent address is `uri`."""
        url: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=7 * 24 * 3600
        )
        return url


def frame_to_parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf, compression="zstd")
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Lake:
    backend: Backend

    def write_frame(self, area: str, dataset: str, partition: str | None, df: pd.DataFrame) -> tuple[str, str]:
        """Write once, named by content: (key, sha256). Writing identical rows again is a no-op."""
        data = frame_to_parquet(df)
        digest = sha256(data)
        folder = f"{area}/{dataset}" + (f"/date={partition}" if partition else "")
        key = f"{folder}/{digest[:16]}.parquet"
        if not self.backend.exists(key):
            self.backend.put(key, data)
        return key, digest

    def write_blob(self, area: str, dataset: str, data: bytes, suffix: str) -> tuple[str, str]:
        digest = sha256(data)
        key = f"{area}/{dataset}/{digest[:16]}{suffix}"
        if not self.backend.exists(key):
            self.backend.put(key, data)
        return key, digest

    def read_blob(self, key: str, *, expected_sha256: str | None = None) -> bytes:
        data = self.backend.get(key)
        if expected_sha256 is not None and sha256(data) != expected_sha256:
            raise ValueError(f"{self.backend.uri(key)}: checksum mismatch (the file changed after it was written)")
        return data

    def read_frame(self, key: str, *, expected_sha256: str | None = None) -> pd.DataFrame:
        data = self.backend.get(key)
        if expected_sha256 is not None and sha256(data) != expected_sha256:
            raise ValueError(f"{self.backend.uri(key)}: checksum mismatch (the file changed after it was written)")
        return pq.read_table(io.BytesIO(data)).to_pandas()

    def write_report(self, dataset: str, kind: str, name: str, data: bytes) -> str:
        """A report or plot for people, under `reports/<dataset>/<kind>/`. Unlike data it is named, not hashed,
        and a re-materialized day replaces its own: a report is derived, and can always be made again."""
        key = f"reports/{dataset}/{kind}/{name}"
        self.backend.put(key, data)
        return key

    def link(self, key: str) -> str:
        return self.backend.link(key)

    def versions(self, area: str, dataset: str, partition: str) -> list[str]:
        return self.backend.list(f"{area}/{dataset}/date={partition}/")

    def uri(self, key: str) -> str:
        return self.backend.uri(key)
