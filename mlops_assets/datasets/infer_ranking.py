"""`mlops-assets init FILE --task ranking --user COL --item COL --time COL [--target COL]`: a recommender's
spec for a file of interactions, sized to the interactions a day brings, that runs as written.

The user and item columns are ids (declared as strings, whatever their digits), the time column gives each
interaction's day, and an optional rating column gives relevance: on a small scale of values (stars) an
interaction rated at the top two values is relevant, on a wider one at or above the median; without one,
every interaction is relevant (clicks, purchases). Every other column stays in the schema (a delivery must
keep its columns) without becoming a feature. The search covers the four ranking families.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import duckdb

from mlops_assets.datasets.infer import (
    InferError,
    _clamp,
    _connect,
    _event_time_expr,
    _number,
    _relation_sql,
    _rule_type,
    _slug,
    cost_policy_defaults,
    q,
)

STAR_SCALE_MAX_VALUES = 10  # a rating with this many values or fewer is a scale of stars


def infer_ranking_spec(
    data_file: str | Path,
    *,
    user: str,
    item: str,
    time: str,
    target: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    path = Path(data_file).resolve()
    if not path.is_file():
        raise InferError(f"{path}: no such file")
    con = _connect()
    try:
        try:
            con.execute(f"CREATE VIEW src AS SELECT * FROM {_relation_sql(path)}")
            summary = con.execute("SUMMARIZE src").df()
        except duckdb.Error as exc:
            raise InferError(f"{path}: cannot be read: {exc}") from exc
        columns = list(summary["column_name"])
        roles = [("--user", user), ("--item", item), ("--time", time)] + ([("--target", target)] if target else [])
        for role, col in roles:
            if col not in columns:
                raise InferError(f"{path}: {role} {col!r} is not a column (columns: {', '.join(columns)})")
        if len({user, item, time, target} - {None}) < len(roles):
            raise InferError(f"{path}: --user, --item, --time and --target must be different columns")
        stats = {str(r["column_name"]): r for _, r in summary.iterrows()}
        types = {c: _rule_type(str(stats[c]["column_type"])) for c in columns}
        event_time = _event_time_expr(time, types[time], _number(stats[time]["max"]))
        try:
            first, last, days, n_rows = con.execute(
                f"SELECT min(t)::DATE, max(t)::DATE, count(DISTINCT t::DATE), count(t) FROM "
                f"(SELECT CAST(TRY({event_time}) AS TIMESTAMP) AS t FROM src)"
            ).fetchone() or (None, None, 0, 0)
        except duckdb.Error as exc:
            raise InferError(f"{path}: --time {time!r} does not read as a time: {exc}") from exc
        if first is None or last is None:
            raise InferError(f"{path}: --time {time!r} has no value that reads as a timestamp")
        threshold = None
        if target:
            if types[target] not in ("int", "float", "bool"):
                raise InferError(f"{path}: --target {target!r} must be a number (a rating or a weight), not text")
            values = [
                r[0]
                for r in con.execute(
                    f"SELECT DISTINCT CAST({q(target)} AS DOUBLE) FROM src WHERE {q(target)} IS NOT NULL ORDER BY 1"
                ).fetchall()
            ]
            if not values:
                raise InferError(f"{path}: --target {target!r} has no values")
            if len(values) <= STAR_SCALE_MAX_VALUES:
                threshold = float(values[-2] if len(values) > 2 else values[-1])
            else:
                row = con.execute(f"SELECT median(CAST({q(target)} AS DOUBLE)) FROM src").fetchone()
                threshold = float(row[0]) if row and row[0] is not None else float(values[len(values) // 2])
        n_items = int(stats[item]["approx_unique"] or 0)
    finally:
        con.close()

    schema: dict[str, dict[str, Any]] = {}
    for c in columns:
        rule: dict[str, Any] = {"type": "string" if c in (user, item) else types[c]}
        if c not in (user, item, time) and float(stats[c]["null_percentage"] or 0) > 0:
            rule["nullable"] = True
        if c == target:
            lo, hi = _number(stats[c]["min"]), _number(stats[c]["max"])
            if lo is not None and hi is not None:
                rule.update({"min": lo, "max": hi})  # a rating outside the scale seen is an error
        schema[c] = rule
    n_days = max(1, int(days))
    per_day = max(1.0, int(n_rows) / n_days)
    # the gate and the sweep judge users, a few hundred interactions' worth each; a short file keeps most days
    eval_days = min(_clamp(math.ceil(1000 / per_day), 1, 14), max(1, n_days // 8))
    ranking: dict[str, Any] = {"user": user, "item": item, "time": time, "k": 10}
    if target:
        ranking.update({"rating": target, "relevance_threshold": threshold})
    families: dict[str, Any] = {
        "popularity": {},
        "item_knn": {"neighbours": [20, 50, 100]},
        "als": {"factors": [16, 32], "regularization": {"low": 0.01, "high": 1.0, "log": True}, "iterations": [8]},
    }
    if n_items <= 20_000:  # EASE keeps an item x item matrix
        families["ease"] = {"l2": {"low": 50.0, "high": 2000.0, "log": True}}
    return {
        "name": _slug(name or path.name.split(".")[0]),
        "description": f"Inferred by `mlops-assets init --task ranking` from {path.name}: {n_rows} interactions "
        f"over {n_days} days.",
        "task": "ranking",
        "metric": "ndcg",
        "source": {"kind": "file", "path": str(path)},
        "schema": schema,
        "event_time": event_time,
        "ranking": ranking,
        "replay": {"start": first.isoformat(), "end": last.isoformat()},
        "monitoring": {
            "drift_share": 0.5,
            "window_days": _clamp(math.ceil(2000 / per_day), 1, 28),
            "evidently_every_days": 28,
            "decay_tolerance": 0.02,
            "decay_window_days": _clamp(math.ceil(1000 / per_day), 1, 28),
            "decay_min_rows": 30,
        },
        # the cost-aware policy, as for a tabular file: prices sized to the metric's scale (NDCG@k), everything
        # else measured as the replay goes; the first model is tried as soon as a hold-out exists
        "policy": cost_policy_defaults("ranking", per_day, n_days, 1.0),
        "training": {"holdout_days": eval_days, "validation_days": eval_days},
        "gate": {
            "min_delta": 0.005,
            "confidence": 0.9,
            "max_slice_regression": 0.03,
            "min_slice_rows": 30,
            "require_approval": False,
        },
        "search": {
            "trials": 6,
            "seconds": 60,
            "seed": 42,
            "windows": [None, 30],
            "recency_half_lives": [None, 14],
            "families": families,
            # recent popularity blended into the best collaborative trial, its shares taken on the day served
            # (README, "The recommender"): one evaluation per weight, no extra fit
            "blends": [2.0, 4.0],
            "blend_windows": [_clamp(30, 1, max(1, n_days // 4))],
        },
    }
