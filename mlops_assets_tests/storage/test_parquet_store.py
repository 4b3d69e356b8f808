"""The Parquet feature store: every read equal to the DuckDB file store's after the same writes (lookups as of
the event, label rates, windows, predictions, monitoring history), one file per partition at its hive path,
several processes writing at once (different days: every row exactly once; the same day: a reader sees one
whole version or the other), and the online rows in Redis that an older or corrected day cannot corrupt."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlops_assets.config import DatasetSpec
from mlops_assets.storage.feature_store import FeatureStore
from mlops_assets.storage.online_redis import RedisOnlineStore
from mlops_assets.storage.parquet_store import ParquetFeatureStore
from mlops_assets_tests.storage.conftest import S3_KEYS, AnyStore, make_store, redis_client

SPEC: dict[str, Any] = {
    "name": "shops",
    "task": "classification",
    "metric": "roc_auc",
    "source": {"kind": "folder", "path": "/nowhere"},
    "schema": {
        "shop": {"type": "string"},
        "city": {"type": "string"},
        "ts": {"type": "timestamp"},
        "units": {"type": "float"},
        "kind": {"type": "string", "nullable": True},
        "y": {"type": "int", "nullable": True},
    },
    "event_time": "CAST(ts AS TIMESTAMP)",
    "entity": ["shop"],
    "target": {"name": "sold_out", "expr": "y", "label_delay_days": 1},
    "features": {
        "columns": {"units": {"type": "numeric"}, "kind": {"type": "categorical"}},
        "lookups": [
            {
                "name": "weather",
                "source": {"kind": "folder", "path": "/nowhere"},
                "keys": {"city": "city"},
                "asof": {"left": "ts", "right": "hour"},
                "columns": {"temp": {"type": "numeric"}},
            }
        ],
        "derived": {"warm_units": {"type": "numeric", "expr": "units * (temp > 10)::INT"}},
        "label_rates": {"shop_rate_3d": {"by": ["shop"], "window_days": 3}},
        "windows": {"units_sum_2d": {"expr": "units", "agg": "sum", "days": 2}},
    },
    "replay": {"start": "2024-01-01", "end": "2024-01-20"},
    "search": {"families": {"baseline": {}}},
}
SHOPS = [f"s{i}" for i in range(8)]
FIRST = dt.date(2024, 1, 1)
FAR_PAST, FAR_FUTURE = dt.date(2000, 1, 1), dt.date(2100, 1, 1)


def spec() -> DatasetSpec:
    return DatasetSpec.model_validate(SPEC)


def weather() -> pd.DataFrame:
    hours = pd.date_range("2023-12-31", "2024-01-25", freq="6h")
    return pd.DataFrame(
        {
            "city": np.repeat(["a", "b"], len(hours)),
            "hour": np.tile(hours, 2),
            "temp": np.arange(2 * len(hours)) % 23 - 3.0,
        }
    )


def raw_day(day: dt.date, n: int = 12) -> pd.DataFrame:
    """`n` raw rows of `day`, the same for the same day in any process."""
    rng = np.random.default_rng(day.toordinal())
    ts = pd.Timestamp(day) + pd.to_timedelta(np.sort(rng.choice(86_400, n, replace=False)), unit="s")
    return pd.DataFrame(
        {
            "shop": rng.choice(np.array(SHOPS), n),
            "city": rng.choice(np.array(["a", "b"]), n),
            "ts": ts,
            "units": rng.integers(0, 50, n).astype(float),
            "kind": rng.choice(np.array(["x", "y", None], dtype=object), n),
            "y": rng.integers(0, 2, n),
        }
    )


def predictions(store: AnyStore, day: dt.date) -> pd.DataFrame:
    feats = store.features_for_day(day)
    return feats[["entity_id", "event_time", "event_day"]].assign(model_version="3", score=feats["units"] / 50)


def write_day(store: AnyStore, day: dt.date) -> None:
    """A day as the daily job writes it: its features, their predictions and a row of monitoring history."""
    store.write_features(day, raw_day(day))
    store.write_predictions(day, predictions(store, day))
    store.save_history("drift_history", day, pd.DataFrame({"column": ["units"], "psi": [day.day / 10]}))


def write_labels(store: AnyStore, day: dt.date) -> None:
    """The labels of `day`'s events, arriving the next day (an empty delivery on the 3rd's)."""
    store.write_labels(day + dt.timedelta(days=1), pd.DataFrame() if day.day == 3 else raw_day(day))


def assert_same_reads(got: AnyStore, want: AnyStore, days: list[dt.date]) -> None:
    """Every public read of the two stores is the same frame: rows, order, columns and dtypes."""
    eq = pd.testing.assert_frame_equal
    eq(got.features_between(FAR_PAST, FAR_FUTURE), want.features_between(FAR_PAST, FAR_FUTURE), check_exact=True)
    eq(got.features_for_day(days[3]), want.features_for_day(days[3]), check_exact=True)
    for as_of, since in [(FAR_FUTURE, None), (days[6], None), (days[-1], days[4])]:
        eq(got.training_frame(as_of, since), want.training_frame(as_of, since), check_exact=True)
        assert got.labelled_rows(as_of, since) == want.labelled_rows(as_of, since)
    eq(got.scored_labels(days[2], days[-2]), want.scored_labels(days[2], days[-2]), check_exact=True)
    eq(got.predictions_after(days[5]), want.predictions_after(days[5]), check_exact=True)
    eq(got.read_history("drift_history"), want.read_history("drift_history"), check_exact=True)
    assert got.read_history("performance_history").empty and want.read_history("performance_history").empty
    assert got.last_arrival_day() == want.last_arrival_day()
    ids = [*SHOPS, "nobody", SHOPS[0]]
    key = "entity_id"
    eq(
        got.online_features(ids).sort_values(key).reset_index(drop=True),
        want.online_features(ids).sort_values(key).reset_index(drop=True),
        check_exact=True,
    )


@pytest.mark.parametrize("backend", ["parquet", "parquet-s3"])  # Redis's rows: equal to these, tested below
def test_every_read_equals_the_duckdb_file_store_after_the_same_writes(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Days out of order, a corrected day after its labels, an empty label delivery: the same writes through
    both stores, then every read compared."""
    want = FeatureStore(tmp_path / "want.duckdb", spec())
    got = make_store(backend, tmp_path, spec(), request)
    days = [FIRST + dt.timedelta(days=i) for i in range(10)]
    order = [days[i] for i in (0, 1, 2, 4, 3, 5, 6, 8, 7, 9)]
    for store in (want, got):
        assert store.load_lookup("weather", weather()) == len(weather())
        assert store.last_arrival_day() is None
        for day in order:
            write_labels(store, day - dt.timedelta(days=1))
            write_day(store, day)
        write_day(store, days[4])  # a corrected day (the same rows: replaced, not doubled)
        store.write_features(days[5], raw_day(days[5], n=5))  # a corrected day with fewer rows
    assert len(got.features_between(FAR_PAST, FAR_FUTURE)) == 9 * 12 + 5
    frame = got.training_frame(FAR_FUTURE)
    assert frame["shop_rate_3d"].notna().any() and frame["units_sum_2d"].notna().any()
    assert frame["temp"].notna().all() and len(frame) > 50
    assert_same_reads(got, want, days)


def test_each_partition_is_one_file_at_its_hive_path_and_replaced_whole(tmp_path: Path) -> None:
    store = ParquetFeatureStore(tmp_path / "lake", spec())
    store.load_lookup("weather", weather())
    for _ in range(3):
        write_day(store, FIRST)
        write_labels(store, FIRST)
    base = tmp_path / "lake" / "shops"
    files = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
    assert files == [
        "features/event_day=2024-01-01/part.parquet",
        "history/drift_history/day=2024-01-01/part.parquet",
        "labels/arrival_day=2024-01-02/part.parquet",
        "lookups/weather.parquet",
        "predictions/event_day=2024-01-01/part.parquet",
        "window_rows/event_day=2024-01-01/part.parquet",
    ]
    assert len(store.features_for_day(FIRST)) == 12 and len(store.read_history("drift_history")) == 1
    with pytest.raises(ValueError, match="write_\\* methods"), store.connect():
        pass
    with store.connect(read_only=True) as con:  # the file store's table names, for callers that query them
        assert con.execute("SELECT count(*) FROM labels").fetchone() == (len(raw_day(FIRST)),)


# --- several processes at once -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workers() -> Iterator[ProcessPoolExecutor]:
    """Three worker processes, started fresh (spawn, as Celery's and Dagster's multiprocess executors do)
    once for the module: each imports the package once."""
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def _store(root: str, endpoint: str | None) -> ParquetFeatureStore:
    """The store as a worker process builds it from its configuration (credentials passed, not inherited)."""
    if endpoint is None:
        return ParquetFeatureStore(root, spec())
    keys = {"s3_access_key": S3_KEYS["AWS_ACCESS_KEY_ID"], "s3_secret_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"]}
    return ParquetFeatureStore(root, spec(), s3_endpoint_url=endpoint, s3_region="us-east-1", **keys)


def _labels_worker(root: str, endpoint: str | None, days: list[dt.date]) -> None:
    store = _store(root, endpoint)
    for day in days:
        write_labels(store, day)


def _days_worker(root: str, endpoint: str | None, days: list[dt.date]) -> None:
    store = _store(root, endpoint)
    for day in days:
        write_day(store, day)


def _same_day_worker(root: str, endpoint: str | None, rows: int, rounds: int) -> None:
    store = _store(root, endpoint)
    for _ in range(rounds):
        store.write_features(FIRST, raw_day(FIRST, n=rows))


@pytest.mark.parametrize("backend", ["parquet", "parquet-s3"])
def test_processes_writing_different_days_at_once_leave_every_row_exactly_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, workers: ProcessPoolExecutor
) -> None:
    """Three processes write 9 days (labels first, then the days' features, predictions and history, each
    process its own days), as workers of a multiprocess or Celery executor would, then all of it once more
    (a day's windows read the days before it, which the first pass may not have had yet): no error, and
    every read equals one process writing the same days in order into the DuckDB file store."""
    store = make_store(backend, tmp_path, spec(), request)
    assert isinstance(store, ParquetFeatureStore)
    store.load_lookup("weather", weather())
    days = [FIRST + dt.timedelta(days=i) for i in range(9)]
    root, endpoint = str(store.root), store.s3_endpoint_url
    for worker in (_labels_worker, _days_worker, _days_worker):
        done = [workers.submit(worker, root, endpoint, days[i::3]) for i in range(3)]
        for future in done:
            future.result()  # re-raises a worker's error here
    want = FeatureStore(tmp_path / "want.duckdb", spec())
    want.load_lookup("weather", weather())
    for day in days:
        write_labels(want, day)
    for day in days:
        write_day(want, day)
    rows = store.features_between(FAR_PAST, FAR_FUTURE)
    assert len(rows) == 9 * 12 and not rows.duplicated(["entity_id", "event_time"]).any()
    assert len(store.read_history("drift_history")) == 9
    assert_same_reads(store, want, days)


def test_two_writers_of_the_same_day_leave_one_whole_version_never_a_torn_file(
    tmp_path: Path, workers: ProcessPoolExecutor
) -> None:
    """Two processes rewrite the same day over and over (one with 5 rows, one with 40) while this one reads
    it: every read is one writer's complete day, and the last write is what stays."""
    root = str(tmp_path / "lake")
    store = _store(root, None)
    store.load_lookup("weather", weather())
    writers = [workers.submit(_same_day_worker, root, None, n, 15) for n in (5, 40)]
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while not all(w.done() for w in writers) and time.monotonic() < deadline:
        day = store.features_for_day(FIRST)
        assert len(day) in (0, 5, 40) and not day.duplicated(["entity_id", "event_time"]).any()
        seen.add(len(day))
    for w in writers:
        w.result()
    assert seen & {5, 40}, "the reader saw the writers' days"
    final = store.features_for_day(FIRST)
    assert len(final) in (5, 40)
    alone = _store(str(tmp_path / "alone"), None)  # that writer's day, written with no one else about
    alone.load_lookup("weather", weather())
    pd.testing.assert_frame_equal(
        final,
        alone.write_features(FIRST, raw_day(FIRST, n=len(final))).pipe(
            lambda f: f.sort_values(["event_time", "entity_id"]).reset_index(drop=True)
        ),
        check_exact=True,
    )
    leftovers = [p.name for p in (tmp_path / "lake" / "shops" / "features").rglob("*") if p.is_file()]
    assert leftovers == ["part.parquet"], "no temporary file left behind"


# --- the online rows in Redis --------------------------------------------------------------------------------


def _rows(day: str, shop: str, units: float, hours: tuple[int, ...] = (9, 12)) -> pd.DataFrame:
    ts = [pd.Timestamp(f"{day} {h}:00") for h in hours]
    return pd.DataFrame({"shop": shop, "city": "a", "ts": ts, "units": units, "kind": "x", "y": 1})


@pytest.fixture
def online(online_factory: list[RedisOnlineStore]) -> RedisOnlineStore:
    import uuid

    store = RedisOnlineStore(redis_client(), spec(), prefix=f"test-{uuid.uuid4().hex}")
    online_factory.append(store)
    return store


def test_an_older_day_written_late_never_overwrites_a_newer_online_row(
    tmp_path: Path, online: RedisOnlineStore
) -> None:
    """A backfill writes the days out of order; a corrected day moves an entity's newest row earlier; an
    entity withdrawn from its newest day falls back to an older one, or leaves; a store of another dataset in
    the same Redis sees none of it."""
    store = ParquetFeatureStore(tmp_path / "lake", spec(), online=online)
    store.load_lookup("weather", weather())
    d1, d2, d3 = (FIRST + dt.timedelta(days=i) for i in range(3))
    store.write_features(d3, pd.concat([_rows("2024-01-03", "s0", 3.0), _rows("2024-01-03", "s1", 30.0)]))
    store.write_features(d1, pd.concat([_rows("2024-01-01", "s0", 1.0), _rows("2024-01-01", "s2", 10.0)]))
    store.write_features(d2, _rows("2024-01-02", "s0", 2.0))  # late and older: s0 keeps day 3's row
    got = online.online_features(["s0", "s1", "s2"]).set_index("entity_id")
    assert got["units"].to_dict() == {"s0": 3.0, "s1": 30.0, "s2": 10.0}
    # Day 3 corrected: s0's newest row is now earlier in the day; s1 is withdrawn and had no other day.
    store.write_features(d3, _rows("2024-01-03", "s0", 33.0, hours=(8,)))
    got = online.online_features(["s0", "s1", "s2"]).set_index("entity_id")
    assert got["units"].to_dict() == {"s0": 33.0, "s2": 10.0}
    assert got.loc["s0", "event_time"] == pd.Timestamp("2024-01-03 08:00")
    # Day 3 withdraws s0 too: it falls back to its newest row of another day (day 2's).
    store.write_features(d3, _rows("2024-01-03", "s2", 7.0))
    got = online.online_features(["s0", "s2"]).set_index("entity_id")
    assert got["units"].to_dict() == {"s0": 2.0, "s2": 7.0}
    # The same answers as the Parquet history ranked on demand, and as the DuckDB file store, exactly.
    history = ParquetFeatureStore(tmp_path / "lake", spec())
    ids = ["s0", "s1", "s2", "nobody"]
    pd.testing.assert_frame_equal(
        online.online_features(ids).sort_values("entity_id").reset_index(drop=True),
        history.online_features(ids).sort_values("entity_id").reset_index(drop=True),
        check_exact=True,
    )
    other = RedisOnlineStore(online.client, DatasetSpec.model_validate({**SPEC, "name": "other"}), prefix="x")
    assert other.key("s0") != online.key("s0") and other.online_features(ids).empty


def test_a_flushed_online_store_is_refilled_from_the_history(tmp_path: Path, online: RedisOnlineStore) -> None:
    store = ParquetFeatureStore(tmp_path / "lake", spec(), online=online)
    store.load_lookup("weather", weather())
    for i in range(3):
        store.write_features(FIRST + dt.timedelta(days=i), raw_day(FIRST + dt.timedelta(days=i)))
    before = online.online_features(SHOPS).sort_values("entity_id").reset_index(drop=True)
    assert len(before) == len(SHOPS)
    assert online.clear() == len(SHOPS) and online.online_features(SHOPS).empty
    assert store.sync_online() == len(SHOPS)
    after = online.online_features(SHOPS).sort_values("entity_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(after, before, check_exact=True)
