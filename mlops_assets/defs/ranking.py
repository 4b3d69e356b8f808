"""The ranking task's side of the shared assets: what `baseline_model`, `candidate_models`,
`evaluation_report`, `batch_predictions`, `performance_report` and `drift_report` do when the spec's task is
ranking. The assets dispatch here on `spec.task` and keep their keys, checks, pools, sensor and jobs; the
logic is in `ml/ranking`, this module only moves data between the stores, MLflow and that logic.

The interactions live in the same feature store as tabular rows: a feature row per (user, item, time) with
the user and item ids and the side tables' columns, and its label (relevant or not) arriving the same day.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg
import pandas as pd

from mlops_assets.config import DatasetSpec
from mlops_assets.defs.resources import ChampionInfo, ModelRegistryResource, nested_run
from mlops_assets.ml.ranking.metrics import DAY, RELEVANT
from mlops_assets.ml.ranking.models import ITEM, TIME, USER
from mlops_assets.storage.feature_sql import FeatureStoreApi
from mlops_assets.storage.feature_store import FeatureStore

LISTS = "recommendations"  # history table: the lists served each day (day, user, rank, item, model_version)
SCORES = "ranking_scores"  # history table: each judged user's metrics per day, with the version that served


def interactions(spec: DatasetSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """A store frame (training rows or feature rows) as the columns the ranking code reads."""
    assert spec.ranking is not None
    out = pd.DataFrame(
        {
            USER: frame[spec.ranking.user].astype(str).to_numpy(),
            ITEM: frame[spec.ranking.item].astype(str).to_numpy(),
            TIME: pd.to_datetime(frame["event_time"]).to_numpy(),
            DAY: pd.to_datetime(frame["event_day"]).dt.date.to_numpy(),
        }
    )
    if spec.target.name in frame:
        out[RELEVANT] = frame[spec.target.name].fillna(0).astype(float).to_numpy()
    return out


def history_before(spec: DatasetSpec, store: FeatureStoreApi, day: dt.date) -> pd.DataFrame:
    """Every interaction of the days before `day`: what a list served on `day` may know."""
    first = spec.replay.start
    if day <= first:
        return interactions(spec, store.features_between(first, first).iloc[0:0])
    return interactions(spec, store.features_between(first, day - dt.timedelta(days=1)))


def day_cutoff(day: dt.date) -> pd.Timestamp:
    """The first instant after `day`: a model fit as of `day` knows every interaction of that day."""
    return pd.Timestamp(day) + pd.Timedelta(days=1)


# --- registry: the bandage ---------------------------------------------------------------------------------
def bandage(
    context: dg.AssetExecutionContext, spec: DatasetSpec, store: FeatureStoreApi, registry: ModelRegistryResource
) -> dict[str, Any] | None:
    """Fit the bandage on the interactions so far and log it; returns what `baseline_model` registers (model
    uri, checksum, what it was fitted on), or None before the first day of interactions."""
    import mlflow

    from mlops_assets.defs.resources import ensure_experiment
    from mlops_assets.ml.ranking.models import fit_bandage, log_recommender
    from mlops_assets.storage.models import artifact_digest

    as_of = store.last_arrival_day()
    if as_of is None:
        return None  # nothing to be item-based about yet: the first day of data comes first
    rows = interactions(spec, store.training_frame(as_of))
    model = fit_bandage(rows, day_cutoff(as_of))
    mlflow.set_tracking_uri(registry.tracking_uri)
    experiment_id = ensure_experiment(registry.tracking_uri, spec.name, registry.artifact_root)
    with mlflow.start_run(experiment_id=experiment_id, run_name="bandage") as run:
        info = log_recommender(model, name="model")
        mlflow.log_params({"family": model.family, **model.params, "as_of": as_of.isoformat()})
        mlflow.set_tags({"mlops.role": "baseline", "dagster_run_id": context.run_id})
    return {
        "model_uri": info.model_uri,
        "run_id": run.info.run_id,
        "sha256": artifact_digest(info.model_uri, registry.tracking_uri),
        "fitted_on": f"{len(rows)} interactions up to {as_of} ({model.describe()}, {model.n_items} items)",
        "family": model.family,
        "as_of": as_of.isoformat(),
    }


# --- training ------------------------------------------------------------------------------------------------
def sweep(
    context: dg.AssetExecutionContext,
    spec: DatasetSpec,
    frame: pd.DataFrame,
    parts: dict[str, pd.DataFrame],
    training_dataset: dict[str, Any],
    registry: ModelRegistryResource,
    sweep_run_id: str,
) -> dg.Output[dict[str, Any]]:
    """The ranking sweep inside the step's MLflow run, each trial a nested run; same pointer as tabular."""
    import mlflow as mlflow_lib

    from mlops_assets.ml.automl import TrialResult, sweep_pointer
    from mlops_assets.ml.ranking.models import log_recommender
    from mlops_assets.ml.ranking.sweep import RankingSpace, run_ranking_sweep
    from mlops_assets.storage.models import artifact_digest

    assert spec.ranking is not None
    space = RankingSpace.from_dict(spec.search)
    rows = interactions(spec, frame)
    valid_days = sorted(pd.to_datetime(parts["valid"]["event_day"]).dt.date.unique())
    holdout_start = pd.Timestamp(min(pd.to_datetime(parts["holdout"]["event_day"]).dt.date))
    metric = spec.metric
    mlflow_lib.log_params(
        {
            "as_of": training_dataset["as_of"],
            "trigger": training_dataset["trigger"],
            "dataset_sha256": training_dataset["sha256"][:16],
            "trials_budget": space.trials,
            "seconds_budget": space.seconds,
            "k": spec.ranking.k,
        }
    )

    def on_trial(t: TrialResult) -> None:
        with nested_run(f"trial-{t.number:02d}-{t.family}"):
            mlflow_lib.log_params(
                {
                    "family": t.family,
                    "window_days": t.window_days,
                    "half_life_days": t.half_life_days,
                    **{f"p_{k}": v for k, v in t.params.items()},
                }
            )
            mlflow_lib.log_metrics(
                {
                    "wall_seconds": t.wall_seconds,
                    "cpu_seconds": t.cpu_seconds,
                    "n_train": t.n_train,
                    **({f"{metric}_at_k": t.score} if t.score is not None else {}),
                }
            )
            mlflow_lib.set_tags({"state": t.state, **({"error": t.error[:500]} if t.error else {})})
        score = f"{t.score:.4f}" if t.score is not None else "-"
        context.log.info(
            f"trial {t.number}: {t.family} {t.params} window={t.window_days} half-life={t.half_life_days} "
            f"{t.state} {metric}@{spec.ranking.k}={score} ({t.wall_seconds:.1f}s wall)"  # type: ignore[union-attr]
        )

    result = run_ranking_sweep(
        rows,
        valid_days=valid_days,
        holdout_start=holdout_start,
        k=spec.ranking.k,
        metric=metric,
        space=space,
        on_trial=on_trial,
    )
    best = result.best
    info = log_recommender(result.best_model, name="model")
    model_sha = artifact_digest(info.model_uri, registry.tracking_uri)
    mlflow_lib.log_metrics(
        {
            f"best_{metric}_at_k": float(best.score or 0.0),
            "sweep_cpu_seconds": result.cpu_seconds,
            "sweep_wall_seconds": result.wall_seconds,
        }
    )
    board = result.leaderboard()
    pointer = sweep_pointer(
        result,
        model_uri=info.model_uri,
        model_sha256=model_sha,
        run_id=sweep_run_id,
        metric=metric,
        dataset_sha256=training_dataset["sha256"],
    )
    return dg.Output(
        pointer,
        metadata={
            "best_family": best.family,
            f"best_valid_{metric}": float(best.score or 0.0),
            "best_window_days": str(best.window_days),
            "best_half_life_days": str(best.half_life_days),
            "trials": len(result.trials),
            "trials_failed": int(sum(t.state == "failed" for t in result.trials)),
            "refit_rows": result.refit_rows,
            "cpu_seconds": round(result.cpu_seconds, 2),
            "wall_seconds": round(result.wall_seconds, 2),
            "leaderboard": dg.MetadataValue.md(board.head(20).to_markdown(index=False)),
            "mlflow_run_id": str(sweep_run_id),
            "model_sha256": model_sha,
        },
    )


def evaluate(
    context: dg.AssetExecutionContext,
    spec: DatasetSpec,
    frame: pd.DataFrame,
    parts: dict[str, pd.DataFrame],
    challenger: Any,
    champion: ChampionInfo | None,
    registry: ModelRegistryResource,
    *,
    refit_of_champion: bool = False,
) -> tuple[Any, Any, pd.DataFrame, pd.DataFrame]:
    """Challenger and the champion's judged fit (`registry/gate.py::judged_model`) on the same hold-out days
    and users, each day's lists from the interactions before it: (comparison, decision, challenger's per-day
    summary, challenger's per-user rows)."""
    from mlops_assets.defs.registry.gate import judged_model
    from mlops_assets.ml.promote import GatePolicy, decide_promotion
    from mlops_assets.ml.ranking.metrics import compare_rankings, evaluate_days

    assert spec.ranking is not None
    rows = interactions(spec, frame)
    days = sorted(pd.to_datetime(parts["holdout"]["event_day"]).dt.date.unique())
    k = spec.ranking.k
    ch_rows, ch_days = evaluate_days(challenger, rows, days, k)
    if champion is not None:
        cp_rows, _ = evaluate_days(judged_model(champion, registry), rows, days, k)
    else:  # no champion at all: judged against recommending nothing
        cp_rows = ch_rows.assign(ndcg=0.0, recall=0.0, ap=0.0, hit=0.0)
    policy = GatePolicy(**spec.gate.model_dump())
    comparison = compare_rankings(
        ch_rows,
        cp_rows,
        metric=spec.metric,
        confidence=policy.confidence,
        min_slice_users=min(20, policy.min_slice_rows),
    )
    decision = decide_promotion(
        comparison,
        policy,
        champion_is_baseline=champion is None or champion.is_baseline,
        refit_of_champion=refit_of_champion,
    )
    context.log.info(f"gate ({comparison.n} users, {len(days)} hold-out days): {decision.status}: {decision.reason}")
    return comparison, decision, ch_days, ch_rows


def paired_on_holdout(spec: DatasetSpec, frame: pd.DataFrame, newer: Any, older: Any) -> Any:
    """Two recommenders on the hold-out days and users of `frame`, as the gate pairs them (a Comparison,
    positive when `newer` is better): the freshness probe's measurement for a recommender."""
    from mlops_assets.defs.training.assets import split_days
    from mlops_assets.ml.promote import GatePolicy
    from mlops_assets.ml.ranking.metrics import compare_rankings, evaluate_days

    assert spec.ranking is not None
    rows = interactions(spec, frame)
    days = sorted(pd.to_datetime(split_days(frame, spec)["holdout"]["event_day"]).dt.date.unique())
    a, _ = evaluate_days(newer, rows, days, spec.ranking.k)
    b, _ = evaluate_days(older, rows, days, spec.ranking.k)
    confidence = GatePolicy(**spec.gate.model_dump()).confidence
    return compare_rankings(a, b, metric=spec.metric, confidence=confidence, min_slice_users=10**9)


# --- serving and monitoring ------------------------------------------------------------------------------
def serve_day(
    context: dg.AssetExecutionContext,
    spec: DatasetSpec,
    store: FeatureStoreApi,
    registry: ModelRegistryResource,
    day: dt.date,
) -> dg.MaterializeResult:
    """Each user active on `day` gets the champion's top k from their interactions before `day`, seen items
    excluded; the lists are kept (what the performance report judges) with the version that made them."""
    from mlops_assets.ml.ranking.models import recommend_ids

    assert spec.ranking is not None
    champion = registry.champion_info(spec.model_name)
    today = store.features_for_day(day)
    users = sorted(set(today[spec.ranking.user].astype(str))) if len(today) else []
    if champion is None:
        # only before the bandage exists: the first day of data has nothing before it to recommend from
        context.log.warning(f"{day}: no champion yet: {len(users)} active users get no list")
        return dg.MaterializeResult(
            metadata={"dagster/row_count": 0, "users": len(users), "model_version": "none", "served": False}
        )
    model = registry.load_champion(champion)
    history = history_before(spec, store, day)
    lists = recommend_ids(model, history, users, spec.ranking.k, as_of=day)
    frame = pd.DataFrame(
        [
            {"user": u, "rank": r + 1, "item": item, "model_version": champion.version}
            for u, lst in zip(users, lists, strict=True)
            for r, item in enumerate(lst)
        ],
        columns=["user", "rank", "item", "model_version"],
    )
    store.save_history(LISTS, day, frame)
    known = set(history[USER]) if len(history) else set()
    context.log.info(f"{day}: lists of {spec.ranking.k} for {len(users)} users by v{champion.version}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(frame),
            "users": len(users),
            "cold_start_users": sum(u not in known for u in users),
            "k": spec.ranking.k,
            "model_version": champion.version,
            "model_is_baseline": champion.is_baseline,
            "catalogue": int(getattr(model, "n_items", 0)),
            "served": True,
        }
    )


def served_lists(store: FeatureStoreApi, day: dt.date) -> dict[str, tuple[list[str], str]]:
    """{user: (list, model version)} served on `day`."""
    if isinstance(store, FeatureStore):  # one day of a table that grows by thousands of rows a day
        with store.connect(read_only=True) as con:
            if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [LISTS]).fetchone()[0]:  # type: ignore[index]
                return {}
            lists = con.execute(f"SELECT * FROM {LISTS} WHERE day = ?", [pd.Timestamp(day)]).df()
    else:
        lists = store.read_history(LISTS)
        if lists.empty:
            return {}
        lists = lists[pd.to_datetime(lists["day"]).dt.date == day]
    lists = lists.sort_values(["user", "rank"])
    return {str(u): (list(g["item"].astype(str)), str(g["model_version"].iloc[0])) for u, g in lists.groupby("user")}


def judge_day(
    context: dg.AssetExecutionContext,
    spec: DatasetSpec,
    store: FeatureStoreApi,
    champion: ChampionInfo | None,
    day: dt.date,
) -> dict[str, Any]:
    """The lists served on `day` against what the users did that day (relevant items they had not seen),
    kept per user; then decay of the champion's metric over the window against its hold-out value."""
    from mlops_assets.ml.ranking.metrics import judged_users, list_quality, metric_column, ranking_decay, score_lists

    assert spec.ranking is not None
    k, metric = spec.ranking.k, spec.metric
    meta: dict[str, Any] = {
        "champion_version": champion.version if champion else None,
        "champion_is_baseline": champion.is_baseline if champion else True,
    }
    served = served_lists(store, day)
    today = interactions(spec, store.training_frame(day, since=day))
    today = today[today[DAY] == day]
    history = history_before(spec, store, day)
    truth = judged_users(history, today)
    if served and truth:
        lists = {u: v[0] for u, v in served.items()}
        returning = set(history[USER]) & set(truth)
        rows = score_lists(pd.Timestamp(day), lists, truth, returning, k)
        rows["model_version"] = [served.get(u, ([], "none"))[1] for u in rows["user"]]
        store.save_history(SCORES, day, rows.drop(columns=["day"]))
        quality = list_quality(list(lists.values()), history, history[ITEM].nunique() if len(history) else 0)
        means = rows[["ndcg", "recall", "ap", "hit"]].mean()
        meta.update(
            {
                f"ndcg_at_{k}": float(means["ndcg"]),
                f"recall_at_{k}": float(means["recall"]),
                f"map_at_{k}": float(means["ap"]),
                f"hit_rate_at_{k}": float(means["hit"]),
                "judged_users": len(rows),
                "judged_returning_users": int((rows["segment"] == "returning").sum()),
                **{k2: float(v) for k2, v in quality.items()},
                "scored_day": day.isoformat(),
            }
        )
    else:
        meta["scored_day"] = None
    if champion is None or champion.is_baseline or champion.holdout_metric is None:
        meta.update({"decay_detected": False, "reason": "champion is the bandage: nothing to decay from"})
        return meta
    history_rows = store.read_history(SCORES)
    if history_rows.empty:
        meta.update({"decay_detected": False, "reason": "no judged lists yet"})
        return meta
    mine = history_rows[history_rows["model_version"].astype(str) == champion.version]
    mine = mine.assign(day=pd.to_datetime(mine["day"]))
    mine = mine[mine["day"].dt.date <= day]
    result = ranking_decay(
        mine,
        metric=metric,
        reference_value=champion.holdout_metric,
        tolerance=spec.monitoring.decay_tolerance,
        window_days=spec.monitoring.decay_window_days,
        min_users=spec.monitoring.decay_min_rows,
    )
    context.log.info(f"{day}: {result.reason}")
    meta.update(result.to_dict())
    meta["metric_column"] = metric_column(metric)
    return meta


def drift_extras(spec: DatasetSpec, profile: Any, current: pd.DataFrame) -> tuple[list[str], dict[str, Any]]:
    """(the columns whose drift counts: every profiled one but the user id, whose mix changes by the day
    whatever happens; what moved in the interactions: item-popularity Jensen-Shannon distance, shares of
    new items and users, activity)."""
    from mlops_assets.ml.ranking.metrics import interaction_drift

    assert spec.ranking is not None
    user, item = spec.ranking.user, spec.ranking.item
    columns = [c for c in profile.columns if c != user]
    extra: dict[str, Any] = {}
    if item in profile.categorical and user in profile.categorical and len(current):
        moved = interaction_drift(
            profile.categorical[item].counts,
            profile.categorical[user].counts,
            current.rename(columns={user: USER, item: ITEM}),
        )
        extra = {k: round(v, 4) for k, v in moved.items()}
    return columns, extra


def evaluation_output(
    context: dg.AssetExecutionContext,
    spec: DatasetSpec,
    frame: pd.DataFrame,
    challenger: Any,
    champion: ChampionInfo | None,
    registry: ModelRegistryResource,
    *,
    refit_of_champion: bool = False,
) -> dg.Output[dict[str, Any]]:
    """`evaluation_report` for a recommender: the same pointer the registry reads, the gate's decision, and
    the challenger's per-day ranking metrics on the hold-out."""
    from mlops_assets.defs.training.assets import split_days

    parts = split_days(frame, spec)
    comparison, decision, ch_days, _ = evaluate(
        context,
        spec,
        frame,
        parts,
        challenger,
        champion,
        registry,
        refit_of_champion=refit_of_champion,
    )
    summary = comparison.to_dict()
    summary.pop("slices", None)
    pointer = {
        "decision": decision.to_dict(),
        "comparison": summary,
        "champion_version": champion.version if champion else None,
        "challenger_holdout": comparison.challenger,
        "champion_holdout": comparison.champion,
    }
    metric = spec.metric
    return dg.Output(
        pointer,
        metadata={
            "against_baseline": bool(champion is None or champion.is_baseline),
            "decision": decision.status,
            "promote": decision.promote,
            "reason": decision.reason,
            f"challenger_{metric}": float(comparison.challenger),
            f"champion_{metric}": float(comparison.champion),
            "delta": float(comparison.delta),
            "delta_ci": f"[{comparison.ci_low:+.4f}, {comparison.ci_high:+.4f}]",
            "p_value": float(comparison.p_value),
            "holdout_users": int(comparison.n),
            "champion_version": champion.version if champion else "none",
            "slices": dg.MetadataValue.md(comparison.slices.round(4).to_markdown(index=False))
            if len(comparison.slices)
            else "no segment with enough users",
            "challenger_by_day": dg.MetadataValue.md(ch_days.round(4).to_markdown(index=False))
            if len(ch_days)
            else "no judged day",
        },
    )
