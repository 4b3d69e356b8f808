"""Nothing lost: the files a run read, kept byte for byte, and the rows it refused, kept with their reasons.

Everything lives in the content-addressed lake (local folder or S3), beside the accepted raw data:

    files/<dataset>/<sha256[:16]>/<file name>       every source file a run read, byte for byte
    quarantine/<dataset>/date=<day>/<hash>.parquet  the day's refused rows, values as text, with
                                                    _quarantine_reason, _source_file, _source_row
    quarantine/<dataset>/no_day/<hash>.parquet      rows whose event time is missing or outside the dataset's days
    replay/<dataset>/date=<day>/<hash>.parquet      rows offered again (as they were, or fixed by hand)

The day's *current* quarantine is the one its latest `raw_batches` materialization names (a re-run after a fix
writes a new file beside the old one). Replaying offers rows to the day again: they are written to the replay
area and the next run of the day validates them with the source's rows, each replayed row superseding the
source row it came from (`_replay_of`), so a row fixed by hand is accepted once and no longer listed.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlops_assets.config import DatasetSpec, Settings
from mlops_assets.datasets.sources import (
    EVENT_TIME_COLUMN,
    SOURCE_FILE_COLUMN,
    SOURCE_ROW_COLUMN,
    SourceFile,
    _connect,
    event_time_sql,
)
from mlops_assets.datasets.validate import REASON_COLUMN, REASON_SEPARATOR, ValidationOutcome, validate_day
from mlops_assets.storage.lake import Lake, LocalBackend, S3Backend

FILES_AREA = "files"
QUARANTINE_AREA = "quarantine"
REPLAY_AREA = "replay"
NO_DAY = "no_day"
REPLAY_OF_COLUMN = "_replay_of"  # "<file>#<row>" of the source row a replayed row replaces
# Set ("yes") on a replayed row to drop the source row it names: how a person settles a conflict (keeps one
# version, discards the other). The decision is itself kept, in the replay area, beside the untouched file.
DISCARD_COLUMN = "_discard"


def _truthy(s: pd.Series) -> pd.Series:
    return s.astype(str).str.strip().str.lower().isin(["yes", "y", "true", "1", "x"])


def as_text(df: pd.DataFrame) -> pd.DataFrame:
    """Every value as the text it was delivered as (nulls stay null): a quarantined row must be storable
    whatever broke in it, and readable by a person."""
    out = pd.DataFrame(index=df.index)
    for c in df.columns:
        s = df[c]
        out[c] = s.astype(object).where(s.notna(), None).map(lambda v: v if v is None else str(v))
    return out


def keep_file(lake: Lake, dataset: str, source: SourceFile) -> str:
    """Copy a source file into the lake byte for byte, streamed (a 2 GB drop never sits in memory), once per
    content. Returns its key."""
    name = Path(source.path).name
    key = f"{FILES_AREA}/{dataset}/{source.sha256[:16]}/{name}"
    backend = lake.backend
    if backend.exists(key):
        return key
    local = source.local or source.path
    if isinstance(backend, LocalBackend):
        dest = backend.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(local, tmp)
        os.replace(tmp, dest)  # atomic: a killed run never leaves half a file under the final name
    elif isinstance(backend, S3Backend):
        backend.client.upload_file(local, backend.bucket, backend._key(key))  # multipart, streamed
    else:
        backend.put(key, Path(local).read_bytes())
    return key


def write_rows(lake: Lake, area: str, dataset: str, partition: str, rows: pd.DataFrame) -> tuple[str, str]:
    """Rows as text, content-addressed: writing the same refused rows again is a no-op."""
    table = pa.Table.from_pandas(as_text(rows), preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    from mlops_assets.storage.lake import sha256

    digest = sha256(data)
    folder = f"{area}/{dataset}/" + (partition if partition == NO_DAY else f"date={partition}")
    key = f"{folder}/{digest[:16]}.parquet"
    if not lake.backend.exists(key):
        lake.backend.put(key, data)
    return key, digest


def _read_all(lake: Lake, keys: list[str]) -> pd.DataFrame:
    frames = [lake.read_frame(k).assign(_key=k) for k in keys if k.endswith(".parquet")]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def event_times(spec: DatasetSpec, rows: pd.DataFrame) -> pd.Series:
    """The event time (naive UTC) of rows given as text, by the same SQL the source uses."""
    table = pa.Table.from_pandas(
        as_text(rows.drop(columns=[c for c in rows.columns if c.startswith("_")])).assign(
            **{SOURCE_ROW_COLUMN: range(len(rows))}
        ),
        preserve_index=False,
    )
    con = _connect()
    try:
        con.register("block", table)
        times = con.execute(event_time_sql(spec, table.column_names, "block")).df()
    except duckdb.Error:
        return pd.Series(pd.NaT, index=rows.index)
    finally:
        con.close()
    return pd.Series(pd.to_datetime(times[EVENT_TIME_COLUMN]).to_numpy(), index=rows.index)


def read_replay(lake: Lake, spec: DatasetSpec, day: str) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Rows offered again for `day`, each batch named by its lake key, with their event time computed."""
    parts, columns = [], {}
    for key in lake.versions(REPLAY_AREA, spec.name, day):
        df = lake.read_frame(key)
        columns[key] = [c for c in df.columns if not c.startswith("_")]
        df[SOURCE_FILE_COLUMN] = key
        df[SOURCE_ROW_COLUMN] = range(1, len(df) + 1)
        df[EVENT_TIME_COLUMN] = event_times(spec, df)
        parts.append(df)
    if not parts:
        return pd.DataFrame(), {}
    return pd.concat(parts, ignore_index=True), columns


def supersede(rows: pd.DataFrame, replay: pd.DataFrame) -> pd.DataFrame:
    """The source's rows minus those a replayed row replaces (the source file itself is never changed)."""
    if replay.empty:
        return rows
    replaced = set(replay.get(REPLAY_OF_COLUMN, pd.Series(dtype=object)).dropna())
    offered = replay[~discarded(replay)]
    if rows.empty:
        return offered.reset_index(drop=True)
    ids = rows[SOURCE_FILE_COLUMN].astype(str) + "#" + rows[SOURCE_ROW_COLUMN].astype("Int64").astype(str)
    return pd.concat([rows[~ids.isin(replaced)], offered], ignore_index=True)


def discarded(replay: pd.DataFrame) -> pd.Series:
    """Replayed rows that only say "drop the source row I name"."""
    if DISCARD_COLUMN not in replay:
        return pd.Series(False, index=replay.index)
    return _truthy(replay[DISCARD_COLUMN])


def current_keys(instance: object, dataset: str, day: str) -> dict[str, str]:
    """The quarantine files the latest raw_batches materialization of `day` wrote ({} if none)."""
    import dagster as dg

    assert isinstance(instance, dg.DagsterInstance)
    recs = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey([dataset, "raw_batches"]), asset_partitions=[day]), limit=1
    ).records
    if not recs or recs[0].asset_materialization is None:
        return {}
    md = recs[0].asset_materialization.metadata
    return {k: str(md[k].value) for k in ("quarantine_key", "orphans_key") if k in md and md[k].value}


def load_quarantine(lake: Lake, spec: DatasetSpec, day: str, instance: object | None = None) -> pd.DataFrame:
    """The day's quarantined rows: the current ones when an instance is given, else every version kept."""
    if instance is not None:
        keys = current_keys(instance, spec.name, day)
        q = keys.get("quarantine_key")
        return _read_all(lake, [q] if q else [])
    df = _read_all(lake, lake.versions(QUARANTINE_AREA, spec.name, day))
    return df if df.empty else df.drop(columns=["_key"]).drop_duplicates().reset_index(drop=True)


def load_orphans(lake: Lake, spec: DatasetSpec) -> pd.DataFrame:
    """Rows of no day (event time missing or outside the dataset's days), from every file that had some."""
    keys = lake.backend.list(f"{QUARANTINE_AREA}/{spec.name}/{NO_DAY}/")
    df = _read_all(lake, keys)
    if df.empty:
        return df
    return df.drop(columns=["_key"]).drop_duplicates().reset_index(drop=True)  # every run stores the same rows


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Rows per reason (a row with several reasons counts under each)."""
    if df.empty:
        return pd.DataFrame(columns=["reason", "rows"])
    parts = df[REASON_COLUMN].astype(str).str.split(REASON_SEPARATOR, regex=False).explode()
    return parts.value_counts().rename_axis("reason").reset_index(name="rows")


def offer_replay(lake: Lake, spec: DatasetSpec, day: str, rows: pd.DataFrame) -> tuple[str | None, ValidationOutcome]:
    """Write rows (quarantined ones, as they are or fixed) to the day's replay area, and say how the current
    spec would judge them. The day's next run ingests them; rows that still fail are quarantined again."""
    rows = rows.reset_index(drop=True)
    if REPLAY_OF_COLUMN not in rows and SOURCE_FILE_COLUMN in rows and SOURCE_ROW_COLUMN in rows:
        n = pd.to_numeric(rows[SOURCE_ROW_COLUMN], errors="coerce").astype("Int64").astype(str)
        rows[REPLAY_OF_COLUMN] = rows[SOURCE_FILE_COLUMN].astype(str) + "#" + n
    keep = [c for c in rows.columns if not c.startswith("_") or c in (REPLAY_OF_COLUMN, DISCARD_COLUMN)]
    offered = rows[keep]
    data_cols = [c for c in keep if not c.startswith("_")]
    kept = offered[~discarded(offered)]
    preview_rows = kept.assign(**{EVENT_TIME_COLUMN: event_times(spec, kept)})
    preview = validate_day(spec, pd.Timestamp(day).date(), preview_rows, ["replay"], {"": data_cols})
    if offered.empty:
        return None, preview
    key, _ = write_rows(lake, REPLAY_AREA, spec.name, day, offered)
    return key, preview


def quarantined_days(lake: Lake, spec: DatasetSpec) -> list[str]:
    """Days that ever had rows quarantined (their current state is in the instance)."""
    days = {k.split("/")[2][len("date=") :] for k in lake.backend.list(f"{QUARANTINE_AREA}/{spec.name}/")}
    return sorted(d for d in days if d and not d.startswith(NO_DAY))


def _tail(path: object, width: int = 60) -> object:
    text = str(path)
    return text if not isinstance(path, str) or len(text) <= width else "…" + text[-(width - 1) :]


def run_cli(
    settings: Settings, action: str, day: str | None, *, out: str | None, fixed: str | None, run: bool, limit: int
) -> int:
    """`mlops-assets quarantine list [DAY] | replay DAY`: what was refused and why, and offering it again."""
    import dagster as dg

    from mlops_assets.config import load_spec
    from mlops_assets.defs.resources import LakeResource

    spec = load_spec(settings.spec_path)
    lake = LakeResource(uri=settings.lake_uri, s3_endpoint_url=os.environ.get("MLOPS_S3_ENDPOINT_URL")).lake()
    if action == "replay" and not day:
        print("quarantine replay needs a DAY (YYYY-MM-DD)", file=sys.stderr)
        return 2
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(settings.data_dir / "dagster_home")))
    if not home.is_dir():
        print(f"{spec.name}: nothing ingested yet ({home} does not exist)", file=sys.stderr)
        return 1
    with dg.DagsterInstance.get() as instance:
        if action == "list":
            days = [day] if day else quarantined_days(lake, spec)
            frames = []
            for d in days:
                df = load_quarantine(lake, spec, d, instance)
                if not df.empty:
                    frames.append(df.assign(_day=d))
                    print(f"{spec.name} {d}: {len(df)} rows quarantined")
                    for r in summarize(df).itertuples():
                        print(f"  {r.rows:>7}  {r.reason}")
            orphans = load_orphans(lake, spec)
            if not orphans.empty and not day:
                print(f"{spec.name} (no day): {len(orphans)} rows whose event time is missing or outside the days")
                for r in summarize(orphans).itertuples():
                    print(f"  {r.rows:>7}  {r.reason}")
                frames.append(orphans.assign(_day=NO_DAY))
            rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
            if rows.empty:
                print(f"{spec.name}: nothing quarantined" + (f" on {day}" if day else ""))
                return 0
            cols = ["_day", SOURCE_FILE_COLUMN, SOURCE_ROW_COLUMN, REASON_COLUMN]
            shown = rows[cols].head(limit).copy()
            # a long path keeps its end (the file's name), not its start: pandas would cut the name off
            shown[SOURCE_FILE_COLUMN] = shown[SOURCE_FILE_COLUMN].map(_tail)
            print(shown.to_string(index=False, max_colwidth=90))
            if out:
                rows.drop(columns=["_key"], errors="ignore").to_csv(out, index=False)
                print(
                    f"{len(rows)} rows written to {out}: fix them, then "
                    f"`mlops-assets quarantine replay DAY --file {out}`"
                )
            return 0
        assert day is not None  # checked above, before opening the instance
        if fixed:
            offered = pd.read_csv(fixed, dtype=str, keep_default_na=False, na_values=[""])
            if "_day" in offered:
                offered = offered[offered["_day"] == day]
        else:
            offered = load_quarantine(lake, spec, day, instance)
        if offered.empty:
            print(f"{spec.name} {day}: nothing to replay")
            return 0
        key, preview = offer_replay(lake, spec, day, offered)
        n_drop = int(discarded(offered).sum())
        print(
            f"{spec.name} {day}: {len(offered) - n_drop} rows offered again, {n_drop} source rows discarded "
            f"({lake.uri(key) if key else '-'}); with the current spec {len(preview.accepted)} pass "
            f"and {len(preview.quarantined)} would be quarantined again"
        )
        for p in preview.problems:
            print(f"  problem: {p}")
        for r in summarize(preview.quarantined).itertuples():
            print(f"  {r.rows:>7}  {r.reason}")
        if not run:
            print(f"run the day again to ingest them: Dagster UI, {spec.name}__daily_job, partition {day}")
            return 0
        from mlops_assets.definitions import build_defs

        job = build_defs(settings.with_spec(settings.spec_path)).resolve_job_def(f"{spec.name}__daily_job")
        result = job.execute_in_process(partition_key=day, instance=instance, raise_on_error=False)
        after = load_quarantine(lake, spec, day, instance)
        outcome = "succeeded" if result.success else "failed"
        print(f"{spec.name}__daily_job {day}: {outcome}; {len(after)} rows still quarantined")
        return 0 if result.success else 1
