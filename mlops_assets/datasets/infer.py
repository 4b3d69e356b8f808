"""Write a working dataset spec from a data file, and check a spec against its data.

`mlops-assets init` is how a dataset the project has never seen enters the loop: the user names the target and
the time column, and everything else (column types, null rules, features, the replay range, a policy sized to
the rows a day brings, a modest search) is inferred here, so the spec it writes runs as it is. The file is
read by DuckDB (`SUMMARIZE` is one streamed pass), never whole in pandas, so a multi-gigabyte drop is fine.

`mlops-assets validate` uses `check_spec_data`: the spec's own rules are checked by pydantic in `config.py`;
this checks what only the data can tell (columns present with the declared types, the expressions evaluate,
the lookups' keys exist) and returns every problem at once, each naming the spec key and what was expected.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import yaml

from mlops_assets.config import DatasetSpec

SAMPLE_ROWS = 20_000  # rows of the source that `validate` evaluates the spec's expressions on
CATEGORICAL_MAX_VALUES = 200  # a string column with more distinct values is an identifier, not a feature
CLASSIFICATION_MAX_VALUES = 2  # a target with at most this many values is a (binary) classification

_INT = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT")
_FLOAT = ("FLOAT", "DOUBLE", "REAL")
_DUCK = {"int": "DOUBLE", "float": "DOUBLE", "string": "VARCHAR", "bool": "BOOLEAN", "timestamp": "TIMESTAMP"}
_DUCK["date"] = "DATE"


class InferError(ValueError):
    """The file or the options cannot make a spec (a column that does not exist, a target that fits no task)."""


def q(name: str) -> str:
    """A column name as a DuckDB identifier (names from a user's file may hold spaces or capitals)."""
    return '"' + name.replace('"', '""') + '"'


def _ident(name: str) -> str:
    return name if re.fullmatch(r"[a-z_][a-z0-9_]*", name) else q(name)


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")  # the pipeline's one time rule: a naive timestamp is UTC
    return con


def _relation_sql(path: Path, *, all_varchar: bool = False) -> str:
    """A DuckDB table expression over a CSV (the sniffer reads the whole file, so a float in the last rows
    still makes the column float) or a Parquet file."""
    p = str(path).replace("'", "''")
    name = path.name.lower()
    if name.endswith(".parquet"):
        return f"read_parquet('{p}')"
    if name.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
        extra = ", all_varchar = true" if all_varchar else ""
        return f"read_csv('{p}', sample_size = -1{extra})"
    raise InferError(f"{path}: unsupported file type (expected .csv, .csv.gz or .parquet)")


def _rule_type(duck_type: str) -> str:
    t = duck_type.upper()
    if t.startswith(_INT):
        return "int"
    if t.startswith(_FLOAT) or t.startswith("DECIMAL"):
        return "float"
    if t == "BOOLEAN":
        return "bool"
    if t.startswith("TIMESTAMP"):
        return "timestamp"
    if t == "DATE":
        return "date"
    return "string"


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")
    s = re.sub(r"_+", "_", s)
    return s if re.match(r"^[a-z]", s or "") else f"d_{s}" if s else "dataset"


def _clamp(x: float, lo: int, hi: int) -> int:
    return int(max(lo, min(hi, math.ceil(x))))


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _event_time_expr(column: str, rule_type: str, max_value: float | None) -> str:
    c = _ident(column)
    if rule_type in ("int", "float"):
        # epoch numbers: seconds, or milliseconds when they are too large to be seconds
        return f"to_timestamp({c} / 1000.0)" if (max_value or 0) > 1e11 else f"to_timestamp({c})"
    return f"CAST({c} AS TIMESTAMP)"


def infer_spec(
    data_file: str | Path,
    *,
    target: str,
    time: str,
    entity: list[str] | None = None,
    task: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """A spec (as the mapping the YAML will hold) for `data_file`, replayed day by day by its `time` column."""
    path = Path(data_file).resolve()
    if not path.is_file():
        raise InferError(f"{path}: no such file")
    entity = list(entity or [])
    con = _connect()
    try:
        rel = _relation_sql(path)
        try:
            con.execute(f"CREATE VIEW src AS SELECT * FROM {rel}")
            summary = con.execute("SUMMARIZE src").df()
        except duckdb.Error as exc:
            raise InferError(f"{path}: cannot be read: {exc}") from exc
        columns = list(summary["column_name"])
        for role, col in [("--target", target), ("--time", time), *[("--entity", e) for e in entity]]:
            if col not in columns:
                raise InferError(f"{path}: {role} {col!r} is not a column (columns: {', '.join(columns)})")
        stats = {str(r["column_name"]): r for _, r in summary.iterrows()}
        n_rows = int(stats[time]["count"])
        types = {c: _rule_type(str(stats[c]["column_type"])) for c in columns}
        text = [c for c in columns if types[c] == "string"]
        if text:  # ISO times kept as text (a Parquet writer's choice) are declared as times: one more pass, all columns
            counts = (
                con.execute(
                    "SELECT "
                    + ", ".join(
                        f"count(*) FILTER (WHERE {q(c)} IS NOT NULL AND TRY_CAST({q(c)} AS TIMESTAMP) IS NULL), "
                        f"count({q(c)})"
                        for c in text
                    )
                    + " FROM src"
                ).fetchone()
                or ()
            )
            for i, c in enumerate(text):
                if counts and counts[2 * i] == 0 and counts[2 * i + 1] > 0:
                    types[c] = "timestamp"
        event_time = _event_time_expr(time, types[time], _number(stats[time]["max"]))
        try:
            first, last, days = con.execute(
                f"SELECT min(t)::DATE, max(t)::DATE, count(DISTINCT t::DATE) FROM "
                f"(SELECT CAST(TRY({event_time}) AS TIMESTAMP) AS t FROM src)"
            ).fetchone() or (None, None, 0)
            hours = con.execute(
                f"SELECT count(DISTINCT hour(CAST(TRY({event_time}) AS TIMESTAMP))) FROM src"
            ).fetchone()
        except duckdb.Error as exc:
            raise InferError(f"{path}: --time {time!r} does not read as a time: {exc}") from exc
        if first is None or last is None:
            raise InferError(f"{path}: --time {time!r} has no value that reads as a timestamp")
        distinct_target = con.execute(
            f"SELECT count(DISTINCT {q(target)}) FROM src WHERE {q(target)} IS NOT NULL"
        ).fetchone()
        n_target = int(distinct_target[0]) if distinct_target else 0
        target_values = [
            r[0]
            for r in con.execute(
                f"SELECT DISTINCT {q(target)} FROM src WHERE {q(target)} IS NOT NULL ORDER BY 1 LIMIT 3"
            ).fetchall()
        ]
        positive_share = None
        if n_target == 2 and types[target] == "string":
            share = con.execute(f"SELECT avg(CAST({q(target)} = ? AS DOUBLE)) FROM src", [target_values[1]]).fetchone()
            positive_share = float(share[0]) if share and share[0] is not None else None
    finally:
        con.close()

    # --- task, target expression and metric ------------------------------------------------------------------
    task = task or ("classification" if n_target <= CLASSIFICATION_MAX_VALUES else "regression")
    if task == "classification":
        if n_target != 2:
            raise InferError(
                f"{path}: --target {target!r} has {n_target} distinct values; classification here is binary "
                "(two values). Use --task regression, or write target.expr to make it 0/1"
            )
        if types[target] == "bool":
            target_expr = f"CAST({_ident(target)} AS INTEGER)"
        elif types[target] == "string":
            # the rarer value is the positive class (the event worth predicting)
            pos = target_values[1] if (positive_share or 0) <= 0.5 else target_values[0]
            target_expr = f"CAST({_ident(target)} = '{str(pos).replace(chr(39), chr(39) * 2)}' AS INTEGER)"
        else:
            target_expr = f"CAST({_ident(target)} = {target_values[1]} AS INTEGER)"
        metric = "roc_auc"
    else:
        if types[target] not in ("int", "float"):
            raise InferError(f"{path}: --task regression needs a numeric --target; {target!r} is {types[target]}")
        target_expr = f"CAST({_ident(target)} AS DOUBLE)"
        metric = "rmse"

    # --- schema: types and null rules from the whole file; ranges open (a later day may go a bit further) --------
    schema: dict[str, dict[str, Any]] = {}
    features: dict[str, dict[str, Any]] = {}
    for c in columns:
        s = stats[c]
        rule: dict[str, Any] = {"type": types[c]}
        if float(s["null_percentage"] or 0) > 0:
            rule["nullable"] = True
        lo = _number(s["min"]) if types[c] in ("int", "float") else None
        if lo is not None and lo >= 0 and c not in (time, target):
            rule["min"] = 0  # a count or a measure that was never negative: a negative value is an error
        schema[c] = rule
        if c in (time, target):
            continue
        distinct = int(s["approx_unique"] or 0)
        if types[c] in ("int", "float"):
            if types[c] == "int" and distinct >= 0.95 * n_rows and n_rows > 100:
                continue  # a row number or an id: no signal, and a model would memorise it
            features[c] = {"type": "numeric"}
        elif types[c] == "bool":
            features[c] = {"type": "numeric", "expr": f"CAST({_ident(c)} AS INTEGER)"}
        elif types[c] == "string" and distinct <= CATEGORICAL_MAX_VALUES:
            features[c] = {"type": "categorical"}
    features["day_of_week"] = {"type": "categorical", "expr": "CAST(dayofweek(event_time) AS VARCHAR)"}
    features["month"] = {"type": "numeric", "expr": "month(event_time)"}
    if hours and int(hours[0]) > 1:
        features["hour"] = {"type": "numeric", "expr": "hour(event_time) + minute(event_time) / 60.0"}
    for e in entity:
        if e in features and features[e]["type"] == "numeric" and types[e] == "int":
            features[e] = {"type": "categorical", "expr": f"CAST({_ident(e)} AS VARCHAR)"}

    # --- thresholds sized to the rows a day brings ------------------------------------------------------------
    n_days = max(1, int(days))
    per_day = n_rows / n_days
    # hold-out and validation: a few hundred rows each, but a short file must keep most days to train on
    eval_days = min(_clamp(300 / per_day, 1, 28), max(1, n_days // 8))
    window_days = _clamp(500 / per_day, 1, 28)  # drift: enough rows that a test is not noise
    decay_days = _clamp(300 / per_day, 1, 28)
    spread = _number(stats[target]["std"]) if task == "regression" else None
    scale = spread if spread and spread > 0 else 1.0
    classification = task == "classification"
    return {
        "name": _slug(name or path.name.split(".")[0]),
        "description": f"Inferred by `mlops-assets init` from {path.name}: {n_rows} rows over {n_days} days.",
        "task": task,
        "metric": metric,
        "source": {"kind": "file", "path": str(path)},
        "schema": schema,
        "event_time": event_time,
        "entity": entity,
        "target": {"name": _slug(target) + "_target", "expr": target_expr, "label_delay_days": 1},
        "features": {"columns": features},
        "replay": {"start": first.isoformat(), "end": last.isoformat()},
        "monitoring": {
            "drift_share": 0.5,
            "window_days": window_days,
            "evidently_every_days": 28,
            "decay_tolerance": 0.02 if classification else round(0.05 * scale, 6),
            "decay_window_days": decay_days,
            "decay_min_rows": int(min(200, max(20, per_day * decay_days / 2))),
        },
        "policy": cost_policy_defaults(task, per_day, n_days, scale),
        "training": {"holdout_days": eval_days, "validation_days": eval_days, "slices": []},
        "gate": {
            "min_delta": 0.002 if classification else round(0.005 * scale, 6),
            "confidence": 0.95,
            "max_slice_regression": 0.03 if classification else round(0.05 * scale, 6),
            "min_slice_rows": int(max(30, min(1000, per_day * eval_days / 4))),
            "require_approval": False,
        },
        "search": {
            "trials": 6,
            "seconds": 30,
            "seed": 42,
            "max_rows": 30000,
            "windows": [None],
            "recency_half_lives": [None],
            "families": {
                "baseline": {},
                ("logistic" if classification else "ridge"): (
                    {"C": {"low": 0.01, "high": 10.0, "log": True}}
                    if classification
                    else {"alpha": {"low": 0.01, "high": 100.0, "log": True}}
                ),
                "hist_gradient_boosting": {
                    "learning_rate": {"low": 0.03, "high": 0.2, "log": True},
                    "max_leaf_nodes": {"low": 7, "high": 31},
                    "max_iter": [100],
                    "l2_regularization": {"low": 1.0e-4, "high": 1.0, "log": True},
                },
            },
        },
    }


def cost_policy_defaults(task: str, per_day: float, n_days: int, scale: float) -> dict[str, Any]:
    """A cost-aware policy sized to the file, so that no number is another dataset's.

    Nothing here is tuned on a dataset: the price of staleness says that serving a model worse by 1 % of the
    metric's scale (0.01 ROC AUC, or 1 % of the target's standard deviation) for a day costs as much as one
    CPU-second of training; how fast models decay and what a retrain costs are measured by the policy as the
    replay goes (the gate's gains, the retrains' CPU, each sweep's freshness probe). The first model is tried
    as soon as a hold-out exists. The ceilings (one retrain a data day) and the one-day minimum of new labels
    are safety, not tuning: a weekly ceiling below seven would overrule the prices wherever retraining is
    cheap (on hotel_rates, 3 a week cost 4 % of RMSE against refitting daily for the same CPU)."""
    unit = 0.01 if task in ("classification", "ranking") else 0.01 * scale  # ROC AUC, NDCG@k: on [0, 1]
    return {
        "decision": "cost",
        "cost": {
            "staleness_price": round(1.0 / unit, 6),
            "cpu_second_price": 1.0,
            "variant": "cumulative",
            "sweep_every_days": int(_clamp(n_days / 4, 14, 90)),
            "max_cpu_seconds": 600.0,
        },
        "drift_share_threshold": 0.5,
        "decay": True,
        "cooldown_days": 0,
        "min_new_labelled_rows": max(1, int(per_day)),
        "max_per_day": 1,
        "max_per_week": 7,
    }


class _Dumper(yaml.SafeDumper):
    pass


def _flow_leaf(dumper: yaml.SafeDumper, data: dict[str, Any]) -> yaml.Node:
    """Leaf mappings (`{type: int, min: 0}`) on one line, like the hand-written specs."""
    leaf = all(not isinstance(v, dict | list) for v in data.values()) and 0 < len(data) <= 4
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=leaf)


_Dumper.add_representer(dict, _flow_leaf)


def write_spec(spec: dict[str, Any], path: str | Path) -> Path:
    """Write the spec as YAML with a header saying where it came from; it is the user's to edit from here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Written by `mlops-assets init` on {dt.date.today().isoformat()}. It runs as it is; edit it freely\n"
        "# (features, thresholds, search) and check it with `mlops-assets validate` before a replay.\n"
    )
    body = yaml.dump(spec, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
    path.write_text(header + body, encoding="utf-8")
    return path


# --- validate: the spec against its data ---------------------------------------------------------------------


def _sample(spec: DatasetSpec, broken: set[str] | None = None) -> tuple[pd.DataFrame, str]:
    """Up to SAMPLE_ROWS rows of the source as delivered (text for a CSV file, as the pipeline reads it), from
    its first file that has no problem of its own (`broken`: those are reported file by file)."""
    from mlops_assets.datasets.sources import named_source_files, read_source_file

    src = spec.source
    named = named_source_files(src)
    if broken and any(n not in broken for _, n in named):
        named = [(p, n) for p, n in named if n not in broken]
    files, names = [p for p, _ in named], [n for _, n in named]
    if not files:
        where = f"s3://{src.bucket}/{src.prefix or ''}" if src.kind == "s3" else src.path
        raise FileNotFoundError(f"source: no file matches {src.pattern!r} in {where}")
    if src.kind == "package":
        df = read_source_file(files[0])
        return df.head(SAMPLE_ROWS) if len(df) > SAMPLE_ROWS else df, names[0]
    con = _connect()
    try:
        rel = _relation_sql(files[0], all_varchar=True)
        return con.execute(f"SELECT * FROM {rel} LIMIT {SAMPLE_ROWS}").df(), names[0]
    finally:
        con.close()


def _typed_select(spec: DatasetSpec, columns: list[str]) -> str:
    """The sample with each schema column cast to its declared type (as validated rows reach the features)."""
    parts = []
    for c in columns:
        rule = spec.schema_.get(c)
        if rule is None:
            continue
        if rule.type == "timestamp":
            parts.append(f"CAST(TRY_CAST({q(c)} AS TIMESTAMPTZ) AS TIMESTAMP) AS {q(c)}")
        elif rule.type == "int":  # as the source types it for the event time ('2013.0' from a float column too)
            parts.append(f"TRY_CAST(TRY_CAST({q(c)} AS DOUBLE) AS BIGINT) AS {q(c)}")
        else:
            parts.append(f"TRY_CAST({q(c)} AS {_DUCK[rule.type]}) AS {q(c)}")
    return ", ".join(parts) or "*"


def _err(exc: Exception) -> str:
    """DuckDB's message without its echo of our generated SQL (the key already says where the problem is)."""
    return " ".join(str(exc).split(" LINE ")[0].split("\n")[0].split())[:300]


def check_spec_data(spec: DatasetSpec) -> list[str]:
    """Every problem between the spec and its data, each as "key: what is wrong (what was expected)"."""
    from mlops_assets.datasets.sources import read_table
    from mlops_assets.datasets.validate import check_source_files

    problems: list[str] = []
    file_problems: list[str] = []
    try:
        # every file read strictly first: a folder with one broken drop in forty must not pass on a sample
        file_problems, broken = check_source_files(spec)
        raw, where = _sample(spec, broken)
    except Exception as exc:  # any failure to read the source is the problem to report
        return [*file_problems, f"source: cannot read the data: {_err(exc)}"]
    if raw.empty:
        return [*file_problems, f"source: {where} has no rows"]
    cols = [c for c in raw.columns if not str(c).startswith("_")]
    for c in spec.schema_:
        if c not in cols:
            problems.append(f"schema.{c}: column not found in {where} (its columns: {', '.join(map(str, cols))})")
    for c in cols:
        if c not in spec.schema_:
            problems.append(
                f"schema: {where} has a column {c!r} the schema does not list (every day would be refused as a "
                "schema change: add it to `schema`)"
            )
    present = [c for c in spec.schema_ if c in cols]
    con = _connect()
    try:
        con.register("raw_sample", raw[present].astype(object).where(raw[present].notna(), None).astype(str))
        con.execute(
            "CREATE TEMP TABLE rawtext AS SELECT "
            + ", ".join(f"CASE WHEN {q(c)} IN ('None', 'nan', '') THEN NULL ELSE {q(c)} END AS {q(c)}" for c in present)
            + " FROM raw_sample"
            if present
            else "CREATE TEMP TABLE rawtext AS SELECT 1 AS _none"
        )
        n = len(raw)
        for c in present:
            rule = spec.schema_[c]
            duck = "TIMESTAMPTZ" if rule.type == "timestamp" else _DUCK[rule.type]
            bad, nulls, example = con.execute(
                f"SELECT count(*) FILTER (WHERE {q(c)} IS NOT NULL AND TRY_CAST({q(c)} AS {duck}) IS NULL), "
                f"count(*) FILTER (WHERE {q(c)} IS NULL), "
                f"any_value({q(c)}) FILTER (WHERE {q(c)} IS NOT NULL AND TRY_CAST({q(c)} AS {duck}) IS NULL) "
                "FROM rawtext"
            ).fetchone() or (0, 0, None)
            if rule.type == "int" and not bad:
                frac = con.execute(
                    f"SELECT count(*) FILTER (WHERE TRY_CAST({q(c)} AS DOUBLE) <> round(TRY_CAST({q(c)} AS DOUBLE))), "
                    f"any_value({q(c)}) FILTER (WHERE TRY_CAST({q(c)} AS DOUBLE) <> round(TRY_CAST({q(c)} AS DOUBLE)))"
                    " FROM rawtext"
                ).fetchone() or (0, None)
                bad, example = frac
            if bad:
                problems.append(
                    f"schema.{c}.type: declared {rule.type}, but {bad} of {n} sampled values are not (e.g. {example!r})"
                )
            if nulls and not rule.nullable:
                problems.append(f"schema.{c}.nullable: false, but {nulls} of {n} sampled values are empty")
            if rule.type in ("int", "float") and (rule.min is not None or rule.max is not None):
                lo = -math.inf if rule.min is None else rule.min
                hi = math.inf if rule.max is None else rule.max
                out = con.execute(
                    f"SELECT count(*) FROM rawtext WHERE TRY_CAST({q(c)} AS DOUBLE) NOT BETWEEN ? AND ?", [lo, hi]
                ).fetchone()
                if out and out[0]:
                    problems.append(
                        f"schema.{c}.min/max: {out[0]} of {n} sampled values fall outside [{rule.min}, {rule.max}] "
                        "(they would be quarantined)"
                    )
        con.execute(f"CREATE TEMP TABLE typed AS SELECT {_typed_select(spec, present)} FROM rawtext")
        # the event time
        try:
            got = con.execute(
                f"SELECT count(t), min(t)::DATE, max(t)::DATE FROM "
                f"(SELECT CAST(TRY({spec.event_time}) AS TIMESTAMP) AS t FROM typed)"
            ).fetchone() or (0, None, None)
            if not got[0]:
                problems.append(f"event_time: {spec.event_time!r} is NULL on every sampled row (expected a timestamp)")
            elif got[0] < n:
                problems.append(f"event_time: NULL on {n - got[0]} of {n} sampled rows (they would be quarantined)")
            if got[1] and (got[2] < spec.replay.start or got[1] > spec.replay.end) and spec.source.kind != "package":
                problems.append(
                    f"replay: {spec.replay.start}..{spec.replay.end} does not overlap the sampled data's days "
                    f"({got[1]}..{got[2]})"
                )
        except duckdb.Error as exc:
            problems.append(f"event_time: {spec.event_time!r} does not evaluate: {_err(exc)}")
        try:
            con.execute(
                f"CREATE TEMP TABLE ev AS SELECT *, CAST(TRY({spec.event_time}) AS TIMESTAMP) AS event_time FROM typed"
            )
        except duckdb.Error:  # already reported above; the features are still checked, without a time
            con.execute("CREATE TEMP TABLE ev AS SELECT *, CAST(NULL AS TIMESTAMP) AS event_time FROM typed")
        # the target
        try:
            vals = con.execute(
                f"SELECT count(y), count(DISTINCT y), min(y), max(y) FROM (SELECT CAST(({spec.target.expr}) AS DOUBLE) "
                "AS y FROM ev)"
            ).fetchone() or (0, 0, None, None)
            if not vals[0]:
                problems.append(f"target.expr: {spec.target.expr!r} is NULL on every sampled row (nothing to learn)")
            elif spec.task == "classification" and not (vals[1] <= 2 and vals[2] >= 0 and vals[3] <= 1):
                problems.append(
                    f"target.expr: a classification target must be 0 or 1, got {vals[1]} distinct values in "
                    f"[{vals[2]}, {vals[3]}]"
                )
        except duckdb.Error as exc:
            problems.append(f"target.expr: {spec.target.expr!r} does not evaluate: {_err(exc)}")
        # features over the raw row
        for name, col in spec.features.columns.items():
            problems += _check_expr(con, f"features.columns.{name}", col.expr or q(name), col.type)
        for name, w in spec.features.windows.items():
            problems += _check_expr(con, f"features.windows.{name}.expr", w.expr, "numeric")
        for i, lk in enumerate(spec.features.lookups):
            key = f"features.lookups[{i}] ({lk.name})"
            try:
                side = read_table(lk.source)
            except Exception as exc:  # an unreadable side table is the problem to report
                problems.append(f"{key}.source: cannot read: {_err(exc)}")
                continue
            for left, right in lk.keys.items():
                if right not in side.columns:
                    problems.append(f"{key}.keys.{left}: {right!r} is not a column of the side table")
                if left not in spec.schema_ and left not in spec.features.columns:
                    problems.append(f"{key}.keys: {left!r} is neither a schema column nor a feature")
            if lk.asof and lk.asof.right not in side.columns:
                problems.append(f"{key}.asof.right: {lk.asof.right!r} is not a column of the side table")
            con.register("side", side.head(1000))
            for name, col in lk.columns.items():
                try:
                    con.execute(f"SELECT ({col.expr or q(name)}) FROM side LIMIT 1").fetchall()
                except duckdb.Error as exc:
                    problems.append(f"{key}.columns.{name}: does not evaluate on the side table: {_err(exc)}")
    finally:
        con.close()
    if not problems:
        problems += _check_feature_sql(spec, raw, where)
    return file_problems + problems


def _check_expr(con: duckdb.DuckDBPyConnection, key: str, expr: str, kind: str) -> list[str]:
    try:
        if kind == "numeric":
            row = con.execute(
                f"SELECT count(v), count(TRY_CAST(v AS DOUBLE)) FROM (SELECT ({expr}) AS v FROM ev)"
            ).fetchone() or (0, 0)
            if row[0] and not row[1]:
                return [f"{key}: declared numeric, but {expr!r} gives no number"]
        else:
            con.execute(f"SELECT ({expr}) FROM ev LIMIT 1").fetchall()
    except duckdb.Error as exc:
        return [f"{key}: {expr!r} does not evaluate over the raw columns: {_err(exc)}"]
    return []


def _check_feature_sql(spec: DatasetSpec, raw: pd.DataFrame, where: str) -> list[str]:
    """The whole feature query (lookups, derived, target rates, windows), run for one sampled day in a
    throwaway store: what the `features` asset will run, so a derived expression that names a lookup column
    wrongly is caught here rather than on the first day of a replay."""
    import tempfile

    from mlops_assets.datasets.sources import EVENT_TIME_COLUMN, SOURCE_ROW_COLUMN, event_time_sql, read_table
    from mlops_assets.datasets.validate import validate_day
    from mlops_assets.storage.feature_store import FeatureStore

    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(Path(tmp) / "check.duckdb", spec)
        try:
            for lk in spec.features.lookups:
                store.load_lookup(lk.name, read_table(lk.source))
            # the event time as the reader computes it: a CSV's text columns cast to their schema types first
            numbered = raw.assign(**{SOURCE_ROW_COLUMN: range(1, len(raw) + 1)})
            con = _connect()
            con.register("raw", numbered)
            when = con.execute(event_time_sql(spec, list(numbered.columns), "raw")).df()[EVENT_TIME_COLUMN]
            con.close()
            raw = raw.assign(**{EVENT_TIME_COLUMN: when.to_numpy()})
            days = pd.to_datetime(when).dt.date
            day = days.dropna().iloc[0] if days.notna().any() else spec.replay.start
            outcome = validate_day(spec, day, raw[(days == day).to_numpy()].reset_index(drop=True), [where])
            rows = outcome.accepted if len(outcome.accepted) else raw.iloc[0:0]
            store.write_features(day, rows)
        except duckdb.Error as exc:
            return [f"features: the feature query fails on a sample day: {_err(exc)}"]
        except Exception as exc:  # reported, not raised: validate lists problems
            return [f"features: cannot compute features on a sample: {_err(exc)}"]
    return []
