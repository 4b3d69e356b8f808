"""Validate a day of raw rows against the dataset's schema, splitting them into accepted and quarantined.

Two kinds of failure are kept apart on purpose. A *day-level* problem (no rows, a column missing or added, a
column whose type changed, a column flooded with nulls) means the delivery itself is wrong: nothing of the day
may reach the features, every delivered row of the day goes to quarantine, and the blocking asset check names
the file, column and rule. A *row-level* problem (a null where none is allowed, a value out of range, bytes
that are not UTF-8, a duplicate, two different rows for one entity and time) costs only that row, which goes
to quarantine with every reason it has, its file and row number, so that it can be inspected and replayed; the
rest of the day flows on.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mlops_assets.config import ColumnRule, DatasetSpec
from mlops_assets.datasets.catalogue import catalogue_rules
from mlops_assets.datasets.sources import (
    DECODE_ERROR_COLUMN,
    EVENT_TIME_COLUMN,
    META_COLUMNS,
    SOURCE_FILE_COLUMN,
    SOURCE_ROW_COLUMN,
    _connect,
)

REASON_COLUMN = "_quarantine_reason"
REASON_SEPARATOR = " | "  # between a row's reasons (a reason itself may contain "; ")
# A non-nullable column null on more than this share of a day's rows is a broken delivery (an export that lost
# a column's values), not a few bad rows: the day is blocked. A column's `max_null_share` overrides it, and
# also applies to nullable columns.
DEFAULT_MAX_NULL_SHARE = 0.5
# Likewise a column whose values mostly do not parse as its type changed type (numbers written as text).
MAX_UNPARSABLE_SHARE = 0.5
# Below this many rows a share says little: problems are counted row by row.
MIN_ROWS_FOR_SHARE = 10

__all__ = ["REASON_COLUMN", "SOURCE_FILE_COLUMN", "ValidationOutcome", "validate_day"]


@dataclass
class ValidationOutcome:
    day: dt.date
    accepted: pd.DataFrame
    quarantined: pd.DataFrame
    problems: list[str] = field(default_factory=list)  # day-level: any problem blocks the day

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def reasons(self) -> dict[str, int]:
        """Rows per reason; a row with several reasons counts under each."""
        if self.quarantined.empty:
            return {}
        parts = self.quarantined[REASON_COLUMN].astype(str).str.split(REASON_SEPARATOR, regex=False).explode()
        return {str(k): int(v) for k, v in parts.value_counts().items()}


def _parse_timestamps(series: pd.Series) -> pd.Series:
    """One rule, and the same parser as the source's event time (DuckDB, session time zone UTC): a timestamp
    without a zone is UTC, one with a zone is converted to UTC. (pandas' ISO 8601 parser carries an offset
    over to the naive values that follow it in a mixed column, shifting them by hours.)"""
    if pd.api.types.is_datetime64_any_dtype(series):
        s = pd.Series(series)
        return s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")
    text = pd.DataFrame(
        {"v": series.astype(object).where(series.notna(), None).map(lambda v: v if v is None else str(v))}
    )
    con = _connect()
    try:
        con.register("text_values", text)
        out = con.execute("SELECT TRY_CAST(v AS TIMESTAMPTZ) AS t FROM text_values").df()["t"]
    finally:
        con.close()
    out = pd.to_datetime(out, utc=True).astype("datetime64[ns, UTC]")
    out.index = series.index
    return out


def _cast(series: pd.Series, rule: ColumnRule) -> pd.Series:
    """Cast to the rule's type; values that do not parse become NaN/NaT and are caught by the caller."""
    if rule.type in ("int", "float"):
        return pd.to_numeric(series, errors="coerce").astype("float64")
    if rule.type in ("timestamp", "date"):
        out = _parse_timestamps(series)
        return out.dt.date.where(out.notna(), None) if rule.type == "date" else out
    if rule.type == "bool":
        truth = {"true": True, "false": False, "1": True, "0": False, "t": True, "f": False, "yes": True, "no": False}
        return series.map(lambda v: truth.get(str(v).strip().lower()) if pd.notna(v) else None)
    return series.where(series.isna(), series.astype(str))


def _row_label(rows: pd.DataFrame, i: object) -> str:
    f = rows.at[i, SOURCE_FILE_COLUMN] if SOURCE_FILE_COLUMN in rows else None
    n = rows.at[i, SOURCE_ROW_COLUMN] if SOURCE_ROW_COLUMN in rows else None
    name = Path(str(f)).name if f is not None and pd.notna(f) else "delivery"
    return f"{name} row {int(n)}" if n is not None and pd.notna(n) else f"{name} row ?"


def _schema_problems(
    spec: DatasetSpec, where: str, rows: pd.DataFrame, file_columns: dict[str, list[str]] | None
) -> list[str]:
    """Missing or extra columns, checked per file: a file missing a column must not hide behind another file
    of the same day that has it."""
    if file_columns is None or SOURCE_FILE_COLUMN not in rows:
        per_file = {"": list(rows.columns)}
    else:
        per_file = {f: file_columns.get(f, list(rows.columns)) for f in rows[SOURCE_FILE_COLUMN].dropna().unique()}
    problems = []
    for f, cols in per_file.items():
        cols = [c for c in cols if c not in META_COLUMNS and not c.startswith("_")]  # "_x": ours, not data
        at = f"{where}: {f}" if f else where
        problems += [f"{at}: column {c!r} is missing (rule: schema lists it)" for c in spec.schema_ if c not in cols]
        problems += [
            f"{at}: column {c!r} is not in the schema (rule: schema changes need a spec change)"
            for c in cols
            if c not in spec.schema_
        ]
    return problems


def _reject_day(day: dt.date, rows: pd.DataFrame, problems: list[str], what: str) -> ValidationOutcome:
    return ValidationOutcome(day, pd.DataFrame(), rows.assign(**{REASON_COLUMN: f"day rejected: {what}"}), problems)


def validate_day(
    spec: DatasetSpec,
    day: dt.date,
    rows: pd.DataFrame,
    files: list[str],
    file_columns: dict[str, list[str]] | None = None,
) -> ValidationOutcome:
    """Split a day's delivered rows into accepted (typed) and quarantined (as delivered, with reasons).

    `files` describes what was read (for the message when nothing was); `file_columns` gives each file's own
    header, so that the schema is checked per file."""
    where = f"{spec.name} {day.isoformat()}"
    if rows.empty:
        read = ", ".join(files) or "no file"
        return ValidationOutcome(
            day,
            pd.DataFrame(),
            pd.DataFrame(),
            [f"{where} ({read}): no rows for this day (rule: a day must have data)"],
        )
    rows = rows.reset_index(drop=True)
    if REASON_COLUMN in rows:  # a replayed quarantine row: its old reason is history, not data
        rows = rows.drop(columns=[REASON_COLUMN])

    problems = _schema_problems(spec, where, rows, file_columns)
    if problems:
        return _reject_day(day, rows, problems, "schema change")

    casts: dict[str, pd.Series] = {}  # one frame built at the end: a column inserted at a time costs ~1 ms each
    reasons: list[list[str]] = [[] for _ in range(len(rows))]

    def flag(mask: pd.Series | np.ndarray, reason: str) -> None:
        for i in np.flatnonzero(np.asarray(mask, dtype=bool)):
            reasons[i].append(reason)

    if DECODE_ERROR_COLUMN in rows:
        bad = rows[DECODE_ERROR_COLUMN].notna()
        for i in np.flatnonzero(bad.to_numpy()):
            reasons[i].append(str(rows.at[i, DECODE_ERROR_COLUMN]))

    n = len(rows)
    for col, rule in spec.schema_.items():
        raw = rows[col]
        cast = _cast(raw, rule)
        was_null = raw.isna()
        unparsable = cast.isna() & ~was_null
        n_values = int((~was_null).sum())
        n_bad = int(unparsable.sum())
        example = raw[unparsable].iloc[0] if n_bad else None
        if n_values and n_bad == n_values:
            problems.append(
                f"{where}: column {col!r} has no value of type {rule.type} (e.g. {example!r}; rule: type {rule.type})"
            )
            continue
        if n >= MIN_ROWS_FOR_SHARE and n_values and n_bad / n_values > MAX_UNPARSABLE_SHARE:
            problems.append(
                f"{where}: column {col!r}: {n_bad / n_values:.0%} of values are not of type {rule.type} "
                f"(e.g. {example!r}; rule: type {rule.type}, at most {MAX_UNPARSABLE_SHARE:.0%} bad values a day)"
            )
            continue
        limit = rule.max_null_share
        if limit is None and not rule.nullable:
            limit = DEFAULT_MAX_NULL_SHARE
        null_share = float(was_null.mean())
        if limit is not None and n >= MIN_ROWS_FOR_SHARE and null_share > limit:
            problems.append(
                f"{where}: column {col!r} is null on {null_share:.0%} of {n} rows "
                f"(rule: at most {limit:.0%} nulls a day{'' if rule.nullable else '; nullable: false'})"
            )
            continue
        flag(unparsable, f"{col}: not a {rule.type} value")
        if not rule.nullable:
            flag(was_null, f"{col}: null (rule: nullable: false)")
        if rule.type in ("int", "float"):
            if rule.type == "int":
                flag(cast.notna() & (cast % 1 != 0), f"{col}: not a whole number (rule: type int)")
            if rule.min is not None:
                flag(cast < rule.min, f"{col}: below min {rule.min:g}")
            if rule.max is not None:
                flag(cast > rule.max, f"{col}: above max {rule.max:g}")
        if rule.values is not None:
            flag(cast.notna() & ~cast.isin(rule.values), f"{col}: not one of {rule.values}")
        casts[col] = cast

    if problems:
        return _reject_day(day, rows, problems, "type change or null flood")
    typed = pd.DataFrame(casts, index=rows.index)

    if EVENT_TIME_COLUMN in rows:
        et = pd.to_datetime(rows[EVENT_TIME_COLUMN], errors="coerce")
        off = et.isna() | (et.dt.date != day)
        for i in np.flatnonzero(off.to_numpy()):
            reasons[i].append(f"event time {et.iat[i]} is not on {day} (rule: a row belongs to its event's UTC day)")

    data_cols = list(spec.schema_)
    # duplicates compare typed values ("1" and "1.0" are the same number); a value that did not parse compares
    # as delivered, so two different bad values are not "duplicates"
    groups = typed[data_cols].astype(str).where(typed[data_cols].notna(), rows[data_cols].astype(str))
    dup = groups.duplicated(keep="first")
    if dup.any():
        first = groups.reset_index().groupby(data_cols, sort=False)["index"].transform("first")
        for i in np.flatnonzero(dup.to_numpy()):
            reasons[i].append(f"duplicate row (same values as {_row_label(rows, int(first.iat[i]))})")
    if EVENT_TIME_COLUMN in rows and spec.entity:
        key = groups[spec.entity].assign(_t=rows[EVENT_TIME_COLUMN].astype(str))[~dup]
        clash = key.duplicated(keep=False)
        if clash.any():
            for _, g in key[clash].groupby(list(key.columns), sort=False):
                ids = list(g.index)
                who = ", ".join(f"{c}={rows.at[ids[0], c]!r}" for c in spec.entity)
                at = rows.at[ids[0], EVENT_TIME_COLUMN]
                where_rows = ", ".join(_row_label(rows, i) for i in ids)
                reason = (
                    f"conflict: {len(ids)} rows for {who} at {at} with different values ({where_rows}; "
                    "rule: one row per entity and event time, none is chosen for you)"
                )
                for i in ids:
                    reasons[i].append(reason)

    for mask, reason in catalogue_rules(spec, typed):  # ranking: users and items its side tables know
        flag(mask, reason)

    text = pd.Series([REASON_SEPARATOR.join(r) for r in reasons], index=rows.index)
    accepted_mask = text == ""
    kept = typed.loc[accepted_mask]
    columns: dict[str, pd.Series] = {}
    for col, rule in spec.schema_.items():
        values = kept[col]
        if rule.type == "int" and not rule.nullable:
            columns[col] = values.astype("int64")
        elif rule.type in ("int", "float", "timestamp"):
            columns[col] = values
        else:
            columns[col] = values.astype(object)
    accepted = pd.DataFrame(columns, index=kept.index)
    quarantined = rows.loc[~accepted_mask].assign(**{REASON_COLUMN: text[~accepted_mask]})
    return ValidationOutcome(day, accepted.reset_index(drop=True), quarantined.reset_index(drop=True), problems)


# --- `mlops-assets validate`: every file of a folder or S3 source, read strictly -----------------------------

_CHECK_TYPES = {"int": "DOUBLE", "float": "DOUBLE", "timestamp": "TIMESTAMPTZ", "date": "TIMESTAMPTZ"}
_BOOL_TEXT = "('true', 'false', '1', '0', 't', 'f', 'yes', 'no')"


@dataclass
class FileFindings:
    """What one strict pass over a source file found, before deciding which findings are the file's own."""

    name: str
    structural: list[str] = field(default_factory=list)  # empty, header only, unreadable, cut, malformed lines
    columns: set[str] = field(default_factory=set)
    rows: int = 0
    bad: dict[str, list[object]] = field(default_factory=dict)  # column -> [values not of the type, an example]
    nulls: dict[str, int] = field(default_factory=dict)
    no_time: int = 0


def _count_block(spec: DatasetSpec, found: FileFindings, con: object, table: object) -> None:
    import duckdb

    assert isinstance(con, duckdb.DuckDBPyConnection)
    names = getattr(table, "column_names", [])
    present = [c for c in spec.schema_ if c in names]
    if not present:
        return
    con.register("check_block", table)
    try:
        parts = []
        for c in present:
            qc = '"' + c.replace('"', '""') + '"'
            rule = spec.schema_[c]
            if rule.type == "bool":
                bad = f"{qc} IS NOT NULL AND lower(trim(CAST({qc} AS VARCHAR))) NOT IN {_BOOL_TEXT}"
            elif rule.type in _CHECK_TYPES:
                cast = f"TRY_CAST({qc} AS {_CHECK_TYPES[rule.type]})"
                bad = f"{qc} IS NOT NULL AND ({cast} IS NULL" + (
                    f" OR {cast} <> round({cast}))" if rule.type == "int" else ")"
                )
            else:
                bad = "false"
            parts += [f"count(*) FILTER (WHERE {bad})", f"any_value(CAST({qc} AS VARCHAR)) FILTER (WHERE {bad})"]
            parts.append(f"count(*) FILTER (WHERE {qc} IS NULL)")
        got = con.execute("SELECT " + ", ".join(parts) + " FROM check_block").fetchall()[0]
    finally:
        con.unregister("check_block")
    for i, c in enumerate(present):
        n_bad, example, n_null = got[3 * i], got[3 * i + 1], got[3 * i + 2]
        if n_bad:
            entry = found.bad.setdefault(c, [0, example])
            entry[0] = int(entry[0]) + int(n_bad)  # type: ignore[call-overload]
        if n_null:
            found.nulls[c] = found.nulls.get(c, 0) + int(n_null)


def inspect_file(spec: DatasetSpec, local: Path, name: str) -> FileFindings:
    """One streamed pass over a file, as the pipeline reads it, noting everything that would block or cost rows."""
    from mlops_assets.datasets.sources import RAW_LINE_COLUMN, SourceError, scan_file

    found = FileFindings(name)
    con = _connect()
    try:
        scan = scan_file(spec, local, None, on_block=lambda t: _count_block(spec, found, con, t))
    except SourceError as exc:
        found.structural.append(f"source: {str(exc).replace(str(local), name)}")
        return found
    finally:
        con.close()
    info = scan.info
    found.columns = {c for c in info.columns if not c.startswith("_")}
    found.rows = info.rows
    if info.note.startswith(("empty file", "header only")):
        found.structural.append(f"source: {name}: {info.note}: it holds no rows (rule: a delivery has data)")
    if info.problem:
        found.structural.append(f"source: {info.problem.replace(str(local), name)}")
    orphans = scan.orphans
    if not orphans.empty and RAW_LINE_COLUMN in orphans:
        lines = orphans[orphans[RAW_LINE_COLUMN].notna()]
        if len(lines):
            first = str(lines[REASON_COLUMN].iloc[0])
            found.structural.append(
                f"source: {name}: {len(lines)} malformed line(s), e.g. {first} (they would be quarantined)"
            )
        orphans = orphans[orphans[RAW_LINE_COLUMN].isna()]
    if not orphans.empty and EVENT_TIME_COLUMN in orphans:
        found.no_time = int(orphans[EVENT_TIME_COLUMN].isna().sum())
    return found


def check_source_files(spec: DatasetSpec) -> tuple[list[str], set[str]]:
    """Every file of the source read strictly, as the pipeline would read it: (the problems, each naming its
    file and the rule; the names of the files that have some).

    A finding shared by every file (a column the spec names that no file has) is the spec's, and is left to
    the spec checks, which report it once; a finding that sets a file apart from the others is that file's."""
    from mlops_assets.datasets.sources import named_source_files

    if spec.source.kind == "package":
        return [], set()
    findings = [inspect_file(spec, local, name) for local, name in named_source_files(spec.source)]
    readable = [f for f in findings if f.columns]
    problems: list[str] = []
    broken: set[str] = set()

    def universal(test: object) -> bool:
        return len(readable) > 1 and all(test(f) for f in readable)  # type: ignore[operator]

    for f in findings:
        mine = list(f.structural)
        if f.columns:
            for c in spec.schema_:
                if c not in f.columns and not universal(lambda g, c=c: c not in g.columns):
                    mine.append(
                        f"schema.{c}: column missing in {f.name} (rule: schema lists it; its days would be blocked)"
                    )
            for c in sorted(f.columns - set(spec.schema_)):
                if not universal(lambda g, c=c: c in g.columns):
                    mine.append(
                        f"schema: {f.name} has a column {c!r} the schema does not list (rule: schema changes need a "
                        "spec change; its days would be blocked)"
                    )
            for c, (n_bad, example) in f.bad.items():
                if not universal(lambda g, c=c: c in g.bad):
                    rule = spec.schema_[c]
                    mine.append(
                        f"schema.{c}.type: declared {rule.type}, but {n_bad} of {f.rows} values in {f.name} are not "
                        f"(e.g. {example!r})"
                    )
            for c, n in f.nulls.items():
                rule = spec.schema_[c]
                if not rule.nullable and not universal(lambda g, c=c: c in g.nulls):
                    mine.append(f"schema.{c}.nullable: false, but {n} of {f.rows} values in {f.name} are empty")
            if f.no_time:
                mine.append(
                    f"event_time: cannot be computed on {f.no_time} of {f.rows} rows of {f.name} (they would be "
                    "quarantined as rows of no day)"
                )
        if mine:
            broken.add(f.name)
        problems += mine
    return problems, broken
