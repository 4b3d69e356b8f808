"""The table a person reads at the end of a replay: what drifted, what the sensor decided and why, what was
promoted, how good the served predictions were, and what orchestration cost."""

from __future__ import annotations

import pandas as pd

from mlops_assets.ml.evaluate import score
from mlops_assets.replay import ReplayResult
from mlops_assets.storage.stores import store_for


def served_metric_by(result: ReplayResult, freq: str) -> pd.Series:
    """The metric of what was actually served (the prediction log scored against labels), per period."""
    spec = result.spec
    if spec.task == "ranking":  # the served lists' metric (ranking_strategies.py)
        from mlops_assets.ranking_strategies import served_metric_by as ranking_served

        return ranking_served(result, freq)
    store = store_for(result.settings, spec)
    first, last = result.days[0].day, result.days[-1].day
    scored = store.scored_labels(first, last)
    if scored.empty:
        return pd.Series(dtype=float)
    scored["period"] = pd.to_datetime(scored["day"]).dt.to_period(freq)
    out = {}
    for period, g in scored.groupby("period"):
        if g["y_true"].nunique() > 1 or spec.task == "regression":
            out[period] = score(spec.metric, g["y_true"].to_numpy(), g["y_score"].to_numpy())
    return pd.Series(out, dtype=float)


def weekly_table(result: ReplayResult) -> pd.DataFrame:
    days = pd.DataFrame(
        [
            {
                "day": pd.Timestamp(r.day),
                "drift_share": r.drift_share,
                "drift": r.drift_detected,
                "decay": r.decay_detected,
                "champion": r.champion_version,
                "ok": r.ok,
                "retrain": r.retrain["decision"] if r.retrain else "",
            }
            for r in result.days
        ]
    )
    days["week"] = days["day"].dt.to_period("W-SUN")
    served = served_metric_by(result, "W-SUN")
    rows = []
    for week, g in days.groupby("week"):
        retrains = [x for x in g["retrain"] if x]
        rows.append(
            {
                "week": str(week.start_time.date()),
                "drift share": round(float(g["drift_share"].mean()), 3) if g["drift_share"].notna().any() else None,
                "drift days": int(g["drift"].sum()),
                "decay days": int(g["decay"].sum()),
                "champion": "v" + str(g["champion"].dropna().iloc[-1]) if g["champion"].notna().any() else "-",
                f"served {result.spec.metric}": round(float(served[week]), 4) if week in served.index else None,
                "retrains": ", ".join(retrains),
                "failed days": int((~g["ok"]).sum()),
            }
        )
    return pd.DataFrame(rows)


def retrain_table(result: ReplayResult) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "day": str(r["day"]),
                "trigger": r["trigger"],
                "kind": r.get("kind", "sweep"),
                "best": f"{r['family']} (window {'all' if r['window'] in (None, 'None') else r['window']})",
                "decision": r["decision"],
                "champion after": f"v{r['champion_version']}",
                "CPU s": round(r["cpu_seconds"], 1),
                "gate": (r["gate_reason"] or "")[:90],
                "why it ran": (r.get("reason") or "")[:110],
            }
            for r in result.retrains
        ]
    )


def overhead_line(result: ReplayResult) -> str:
    wall = sum(r.wall_seconds for r in result.days)
    steps = sum(r.step_seconds for r in result.days)
    n = len(result.days)
    share = (wall - steps) / wall if wall else 0.0
    return (
        f"Daily tick: {wall / n:.2f} s mean wall, of which {steps / n:.2f} s asset work and "
        f"{(wall - steps) / n:.2f} s Dagster overhead ({share:.0%}); in-process executor for light steps."
    )


def render_summary(result: ReplayResult, *, compare: bool = True) -> str:
    out = [
        "",
        f"== {result.spec.name}: {len(result.days)} days replayed in {result.wall_seconds:.0f} s ==",
        overhead_line(result),
        "",
        "Per week",
        weekly_table(result).to_string(index=False),
        "",
        "Retrain decisions that fired, and what the gate did",
        retrain_table(result).to_string(index=False) if result.retrains else "(none)",
    ]
    # grouped by the rule, not by its numbers: "no drift and no decay (drift share 0.48 < 0.50 (2001-09-09); ..."
    # is one reason whatever the day's share
    reasons = pd.Series([r.decision for r in result.days if not r.retrain], dtype=object)
    skips = (
        reasons.str.split(",")
        .str[0]
        .str.replace(r"\s*\(.*$", "", regex=True)
        .str.replace(r"\d{4}-\d{2}-\d{2}|\d+(\.\d+)?", "N", regex=True)  # one rule, whatever its numbers
        .value_counts()
    )
    if len(skips):
        out += ["", "Sensor skips by reason", skips.head(8).to_string()]
    if compare and result.spec.task == "ranking":
        from mlops_assets.ranking_strategies import compare_ranking_strategies

        out += ["", compare_ranking_strategies(result).render()]
    elif compare:
        from mlops_assets.strategies import compare_strategies

        cmp = compare_strategies(result)
        out += ["", cmp.render()]
    out.append("")
    out.append(
        f"UI: MLOPS_SPEC={result.settings.spec_path} MLOPS_DATA_DIR={result.settings.data_dir} "
        f"DAGSTER_HOME={result.home} dagster dev -m mlops_assets.definitions; MLflow: "
        f"mlflow ui --backend-store-uri {result.settings.mlflow_tracking_uri}"
    )
    return "\n".join(out)
