"""An S3 prefix as a dataset's source, against a real S3-compatible server on loopback (moto's), through the
real daily job: rows are read by the same streaming reader as a folder, files are named by their s3:// URI,
each object's bytes are kept in the lake, a corrected re-delivery is fetched again, a broken object blocks its
day naming the object, and `validate` checks the spec against the objects."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from mlops_assets.cli import main
from mlops_assets.config import Settings, SourceSpec, load_spec
from mlops_assets.datasets.s3_source import mirror, s3_client
from mlops_assets.datasets.sources import META_COLUMNS, read_day
from mlops_assets.definitions import build_defs
from mlops_assets_tests.conftest import fast_flights_spec, job
from mlops_assets_tests.defs.ingestion.test_bad_input import check_result
from mlops_assets_tests.services import s3_server

BUCKET, PREFIX = "drops", "flights/"
D1, D2, D3 = dt.date(2013, 1, 1), dt.date(2013, 1, 2), dt.date(2013, 1, 3)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with s3_server() as url:
        yield url


@pytest.fixture
def s3(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("MLOPS_S3_ENDPOINT_URL", endpoint)
    client = s3_client()
    if any(b["Name"] == BUCKET for b in client.list_buckets().get("Buckets", [])):
        for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):  # each test starts empty
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    else:
        client.create_bucket(Bucket=BUCKET)
    return client


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def s3_spec(s3: Any, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Day 1 as a CSV, day 2 as a gzipped CSV, day 3 as Parquet: one object a day under a prefix, plus an
    object the pattern leaves out."""
    shipped = load_spec(fast_flights_spec(tmp_path))
    for day in (D1, D2, D3):
        rows, _ = read_day(shipped, day)
        rows = rows.drop(columns=[c for c in META_COLUMNS if c in rows])
        if day == D1:
            s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}2013/01/{day}.csv", Body=rows.to_csv(index=False).encode())
        elif day == D2:
            body = gzip.compress(rows.to_csv(index=False).encode())
            s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}2013/01/{day}.csv.gz", Body=body)
        else:
            local = tmp_path / "d3.parquet"
            rows.to_parquet(local)
            s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}2013/01/{day}.parquet", Body=local.read_bytes())
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}README.txt", Body=b"not data")
    raw = yaml.safe_load(fast_flights_spec(tmp_path).read_text())
    raw["source"] = {"kind": "s3", "bucket": BUCKET, "prefix": PREFIX, "pattern": "2013/*/*"}
    path = tmp_path / "flights_s3.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.setenv("MLOPS_SPEC", str(path))
    return Settings.from_env()


def test_mirror_downloads_each_version_once_and_selects_by_pattern(s3: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key="p/a.csv", Body=b"x\n1\n")
    s3.put_object(Bucket=BUCKET, Key="p/sub/b.csv", Body=b"x\n2\n")
    s3.put_object(Bucket=BUCKET, Key="p/c.txt", Body=b"no")
    s3.put_object(Bucket=BUCKET, Key="p/.hidden.csv", Body=b"x\n3\n")
    source = SourceSpec(kind="s3", bucket=BUCKET, prefix="p/", pattern="*.csv")
    calls: list[str] = []
    real = s3.download_file

    def counting(bucket: str, key: str, dest: str) -> None:
        calls.append(key)
        real(bucket, key, dest)

    s3.download_file = counting
    first = mirror(s3, source, tmp_path / "m")
    assert [o.uri for o in first] == [f"s3://{BUCKET}/p/a.csv", f"s3://{BUCKET}/p/sub/b.csv"]
    assert [o.path.read_bytes() for o in first] == [b"x\n1\n", b"x\n2\n"]
    assert first[0].path.name == "a.csv"
    assert mirror(s3, source, tmp_path / "m") == first and len(calls) == 2, "unchanged objects are not fetched"
    s3.put_object(Bucket=BUCKET, Key="p/a.csv", Body=b"x\n10\n")  # corrected re-delivery under the same key
    again = mirror(s3, source, tmp_path / "m")
    assert calls[2:] == ["p/a.csv"] and again[0].path.read_bytes() == b"x\n10\n"
    assert not list((tmp_path / "m").rglob("*.part")), "no partial download left behind"


def test_a_missing_bucket_is_a_source_error_naming_it(s3: Any, tmp_path: Path) -> None:
    from mlops_assets.datasets.s3_source import S3SourceError

    with pytest.raises(S3SourceError, match="s3://no-such-bucket/x/: cannot list the source prefix"):
        mirror(s3, SourceSpec(kind="s3", bucket="no-such-bucket", prefix="x/"), tmp_path)


def test_daily_job_reads_an_s3_prefix(s3_spec: Settings, s3: Any, tmp_path: Path) -> None:
    shipped = load_spec(fast_flights_spec(tmp_path))
    defs = build_defs(s3_spec)
    daily = defs.resolve_job_def(job("daily_job"))
    key1 = f"{PREFIX}2013/01/{D1}.csv"
    with dg.DagsterInstance.get() as instance:
        defs.resolve_job_def(job("bootstrap_job")).execute_in_process(instance=instance)
        r1 = daily.execute_in_process(instance=instance, partition_key=D1.isoformat())
        r2 = daily.execute_in_process(instance=instance, partition_key=D2.isoformat())
        assert r1.success and r2.success
        for r, d in ((r1, D1), (r2, D2)):
            meta = r.asset_materializations_for_node(job("raw_batches"))[0].metadata
            assert meta["dagster/row_count"].value == len(read_day(shipped, d)[0])
            assert meta["rows_quarantined"].value == 0
            names = meta["source_files"].value  # the objects read: all of them when first seen, then the day's
            assert f"s3://{BUCKET}/{key1}" in names or d != D1
            assert names and all(str(n).startswith(f"s3://{BUCKET}/{PREFIX}") for n in names)
            assert not any("README" in str(n) for n in names), "the pattern leaves other objects out"

        # the bytes of every object read are kept in the lake, byte for byte
        kept = {_sha(p.read_bytes()) for p in (s3_spec.data_dir / "lake" / "files").rglob("*") if p.is_file()}
        body1 = s3.get_object(Bucket=BUCKET, Key=key1)["Body"].read()
        assert _sha(body1) in kept

        # a corrected re-delivery of day 1 (one flight removed) is fetched again and replaces the day's rows;
        # the first delivery's bytes stay in the lake
        lines = body1.decode().splitlines(keepends=True)
        s3.put_object(Bucket=BUCKET, Key=key1, Body="".join(lines[:-1]).encode())
        again = daily.execute_in_process(instance=instance, partition_key=D1.isoformat())
        meta = again.asset_materializations_for_node(job("raw_batches"))[0].metadata
        assert meta["dagster/row_count"].value == len(read_day(shipped, D1)[0]) - 1
        kept_after = {_sha(p.read_bytes()) for p in (s3_spec.data_dir / "lake" / "files").rglob("*") if p.is_file()}
        assert _sha(body1) in kept_after and _sha("".join(lines[:-1]).encode()) in kept_after

        # a truncated object blocks the day it could feed, naming the object by its URI
        key3 = f"{PREFIX}2013/01/{D3}.parquet"
        data = s3.get_object(Bucket=BUCKET, Key=key3)["Body"].read()
        s3.put_object(Bucket=BUCKET, Key=key3, Body=data[: len(data) // 2])
        r3 = daily.execute_in_process(instance=instance, partition_key=D3.isoformat(), raise_on_error=False)
        ok, msg = check_result(instance, r3.run_id, "delivery_valid")
        assert not r3.success and not ok
        assert f"s3://{BUCKET}/{key3}: cannot be read as Parquet" in msg


def test_validate_checks_an_s3_spec_against_its_objects(
    s3_spec: Settings, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(s3_spec.spec_path)]) == 0
    assert "checked against its data" in capsys.readouterr().out
    raw = yaml.safe_load(s3_spec.spec_path.read_text())
    raw["schema"]["tailnumber"] = raw["schema"].pop("tailnum")
    bad = s3_spec.spec_path.with_name("bad.yaml")
    bad.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"schema.tailnumber: column not found in s3://{BUCKET}/{PREFIX}2013/01/{D1}.csv" in err
