"""The lake is write-once and content-addressed, locally and on S3 (through dagster-aws's S3Resource against a
real S3-compatible server on loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from mlops_assets.defs.resources import LakeResource
from mlops_assets.storage.lake import Lake, LocalBackend
from mlops_assets_tests.services import s3_server


def frame(n: int = 5) -> pd.DataFrame:
    return pd.DataFrame({"a": range(n), "b": [f"x{i}" for i in range(n)]})


def test_local_writes_are_content_addressed_and_never_overwritten(tmp_path: Path) -> None:
    lake = Lake(LocalBackend(tmp_path))
    k1, sha1 = lake.write_frame("raw", "ds", "2024-01-01", frame(5))
    k1b, _ = lake.write_frame("raw", "ds", "2024-01-01", frame(5))
    k2, _ = lake.write_frame("raw", "ds", "2024-01-01", frame(6))  # a corrected re-delivery
    assert k1 == k1b and k1 != k2
    assert lake.versions("raw", "ds", "2024-01-01") == sorted([k1, k2])
    pd.testing.assert_frame_equal(lake.read_frame(k1, expected_sha256=sha1), frame(5))


def test_a_changed_file_fails_its_checksum(tmp_path: Path) -> None:
    lake = Lake(LocalBackend(tmp_path))
    key, sha = lake.write_frame("raw", "ds", "2024-01-01", frame())
    (tmp_path / key).write_bytes(b"tampered")
    with pytest.raises(ValueError, match="checksum mismatch"):
        lake.read_frame(key, expected_sha256=sha)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with s3_server() as url:
        yield url


def test_s3_lake_through_dagster_aws(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="lake")
    lake = LakeResource(uri="s3://lake/prod", s3_endpoint_url=s3_endpoint, s3_region_name="us-east-1").lake()
    key, sha = lake.write_frame("raw", "ds", "2024-01-01", frame())
    assert lake.uri(key) == f"s3://lake/prod/{key}"
    assert lake.versions("raw", "ds", "2024-01-01") == [key]
    pd.testing.assert_frame_equal(lake.read_frame(key, expected_sha256=sha), frame())
    blob_key, blob_sha = lake.write_blob("profiles", "ds", b'{"x": 1}', ".json")
    assert lake.read_blob(blob_key, expected_sha256=blob_sha) == b'{"x": 1}'
