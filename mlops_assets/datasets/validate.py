"""Validate a day of raw rows against the dataset's schema, splitting them into accepted and quarantined.

Two kinds of failure are kept apart on purpose. A *day-level* problem (no rows, a column missing or added, a
column whose type changed) means the delivery itself is wrong: nothing of the day may reach the features,
and the blocking asset check says which column and rule. A *row-level* problem (a null where none is
allowed, a value out of range, a duplicate) costs only that row, which goes to quarantine with its reason so
that it can be inspected and replayed; the rest of the day flows on.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlops_assets.config import ColumnRule, DatasetSpec

SOURCE_FILE_COLUMN = "_source_file"
REASON_COLUMN = "_quarantine_reason"


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
        if self.quarantined.empty:
            return {}
        return {str(k): int(v) for k, v in self.quarantined[REASON_COLUMN].value_counts().items()}


def _cast(series: pd.Series, rule: ColumnRule) -> pd.Series:
    """Cast to the rule's type; values that do not parse become NaN/NaT and are caught by the caller."""
    if rule.type in ("int", "float"):
        return pd.to_numeric(series, errors="coerce").astype("float64")
    if rule.type in ("timestamp", "date"):
        out = pd.to_datetime(series, errors="coerce", utc=True)
        return out.dt.date if rule.type == "date" else out
    if rule.type == "bool":
        mapped = series.map(
            lambda v: (
                {"true": True, "false": False, "1": True, "0": False}.get(str(v).strip().lower())
                if pd.notna(v)
                else None
            )
        )
        return mapped
    return series.where(series.isna(), series.astype(str))


def validate_day(spec: DatasetSpec, day: dt.date, rows: pd.DataFrame, files: list[str]) -> ValidationOutcome:
    where = f"{spec.name} {day.isoformat()} ({', '.join(files) or 'no file'})"
    empty = pd.DataFrame()
    if rows.empty:
        return ValidationOutcome(day, empty, empty, [f"{where}: no rows for this day (rule: a day must have data)"])

    expected = list(spec.schema_)
    present = [c for c in rows.columns if c != SOURCE_FILE_COLUMN]
    missing = [c for c in expected if c not in present]
    extra = [c for c in present if c not in spec.schema_]
    problems = [f"{where}: column {c!r} is missing (rule: schema lists it)" for c in missing]
    problems += [f"{where}: column {c!r} is not in the schema (rule: schema changes need a spec change)" for c in extra]
    if problems:
        return ValidationOutcome(day, empty, rows.assign(**{REASON_COLUMN: "day rejected: schema change"}), problems)

    typed = pd.DataFrame(index=rows.index)
    reasons = pd.Series("", index=rows.index, dtype=object)

    def flag(mask: pd.Series | np.ndarray, reason: str) -> None:
        m = pd.Series(mask, index=rows.index) & (reasons == "")
        reasons[m] = reason

    for col, rule in spec.schema_.items():
        raw = rows[col]
        cast = _cast(raw, rule)
        was_null = raw.isna()
        unparsable = cast.isna() & ~was_null
        n_values = int((~was_null).sum())
        if n_values and int(unparsable.sum()) == n_values:
            problems.append(
                f"{where}: column {col!r} has no value of type {rule.type} "
                f"(e.g. {raw[~was_null].iloc[0]!r}; rule: type {rule.type})"
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
        return ValidationOutcome(day, empty, rows.assign(**{REASON_COLUMN: "day rejected: type change"}), problems)

    data_cols = list(spec.schema_)
    dup = rows.duplicated(subset=data_cols, keep="first")
    flag(dup, "duplicate row")

    accepted_mask = reasons == ""
    accepted = rows.loc[accepted_mask, data_cols].copy()
    for col, rule in spec.schema_.items():
        if rule.type == "int" and not rule.nullable:
            accepted[col] = typed.loc[accepted_mask, col].astype("int64")
        elif rule.type in ("int", "float") or rule.type == "timestamp":
            accepted[col] = typed.loc[accepted_mask, col]
    quarantined = rows.loc[~accepted_mask].assign(**{REASON_COLUMN: reasons[~accepted_mask]})
    return ValidationOutcome(day, accepted.reset_index(drop=True), quarantined.reset_index(drop=True), problems)
