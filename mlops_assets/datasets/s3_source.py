"""An S3 prefix as a source: the objects under it are mirrored to a local folder, then read like a folder.

Mirroring rather than reading objects in memory keeps the one reader that streams a file block by block (a
2 GB drop costs a few blocks of memory wherever it lives), lets every run copy the exact bytes it read into
the lake, and downloads an object once per version: a mirrored object is fetched again only when its ETag or
size changes (a corrected re-delivery under the same key). The download goes to a temporary name first, so a
killed run never leaves half an object that a later run would take for whole.

The client comes from dagster-aws's `S3Resource` (boto3's credential chain; `MLOPS_S3_ENDPOINT_URL` for an
S3-compatible server), the same way the lake reaches S3.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops_assets.config import Settings, SourceSpec


class S3SourceError(RuntimeError):
    """The prefix cannot be listed or an object cannot be fetched; names the bucket and key."""


@dataclass(frozen=True)
class MirroredObject:
    uri: str  # s3://bucket/key: what a person is shown
    path: Path  # the local copy the readers stream
    etag: str
    size: int


def s3_client() -> Any:
    """A boto3 S3 client built by dagster-aws (retries, profile); the endpoint from MLOPS_S3_ENDPOINT_URL, the
    region and credentials from boto3's own chain (AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, ...)."""
    from dagster_aws.s3 import S3Resource

    return S3Resource(endpoint_url=os.environ.get("MLOPS_S3_ENDPOINT_URL") or None).get_client()


def mirror_dir() -> Path:
    return Settings.from_env().data_dir / "sources" / "s3"


def _matches(relative: str, pattern: str) -> bool:
    """`pattern` is a glob over the key below the prefix (`*.csv`, `2013/*/*.parquet`); `*` alone is all."""
    return pattern == "*" or fnmatch.fnmatchcase(relative, pattern) or fnmatch.fnmatchcase(Path(relative).name, pattern)


def list_objects(client: Any, source: SourceSpec) -> list[dict[str, Any]]:
    """The objects under the prefix that the pattern selects, in key order; folders and dot-files left out."""
    assert source.bucket
    prefix = source.prefix or ""
    out: list[dict[str, Any]] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=source.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key: str = obj["Key"]
                relative = key[len(prefix) :].lstrip("/")
                if not relative or key.endswith("/") or Path(relative).name.startswith("."):
                    continue
                if _matches(relative, source.pattern):
                    out.append(obj)
    except Exception as exc:  # botocore raises many types; the message is what a person needs
        raise S3SourceError(f"s3://{source.bucket}/{prefix}: cannot list the source prefix: {exc}") from exc
    return sorted(out, key=lambda o: o["Key"])


def mirror(client: Any, source: SourceSpec, root: Path) -> list[MirroredObject]:
    """Bring every selected object's current version to `root`, downloading only what changed."""
    assert source.bucket
    out: list[MirroredObject] = []
    for obj in list_objects(client, source):
        key, etag, size = obj["Key"], str(obj.get("ETag", "")).strip('"'), int(obj["Size"])
        uri = f"s3://{source.bucket}/{key}"
        # One folder per key (hashed: keys may hold characters a file system refuses), named file inside so
        # the lake's byte-for-byte copy keeps the object's own name.
        folder = root / source.bucket / hashlib.sha1(key.encode()).hexdigest()[:16]
        path = folder / Path(key).name
        stamp = folder / ".object.json"
        want = {"uri": uri, "etag": etag, "size": size}
        if not (path.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == want):
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{path.name}.part"
            try:
                client.download_file(source.bucket, key, str(tmp))  # streamed to disk, multipart for big objects
            except Exception as exc:
                tmp.unlink(missing_ok=True)
                raise S3SourceError(f"{uri}: cannot be downloaded: {exc}") from exc
            if tmp.stat().st_size != size:
                got = tmp.stat().st_size
                tmp.unlink(missing_ok=True)
                raise S3SourceError(f"{uri}: downloaded {got} bytes, the listing says {size} (changed mid-read?)")
            os.replace(tmp, path)
            stamp.write_text(json.dumps(want))
        out.append(MirroredObject(uri, path, etag, size))
    return out
