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

    typed = pd.DataFrame(index=rows.index)
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
        typed[col] = cast

    if problems:
        return _reject_day(day, rows, problems, "type change or null flood")

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
    accepted = pd.DataFrame(index=rows.index[accepted_mask])
    for col, rule in spec.schema_.items():
        values = typed.loc[accepted_mask, col]
        if rule.type == "int" and not rule.nullable:
            accepted[col] = values.astype("int64")
        elif rule.type in ("int", "float", "timestamp"):
            accepted[col] = values
        else:
            accepted[col] = values.astype(object)
    quarantined = rows.loc[~accepted_mask].assign(**{REASON_COLUMN: text[~accepted_mask]})
    return ValidationOutcome(day, accepted.reset_index(drop=True), quarantined.reset_index(drop=True), problems)
