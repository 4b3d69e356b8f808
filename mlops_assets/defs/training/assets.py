"""Training: a point-in-time training set, a budgeted sweep over model families, and the challenger's
evaluation against the champion on the same recent hold-out."""

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd

from mlops_assets.config import DatasetSpec, Settings
from mlops_assets.defs import names
from mlops_assets.defs.monitoring.assets import report_day
from mlops_assets.defs.registry.gate import judge
from mlops_assets.defs.reports import publish
from mlops_assets.defs.resources import (
    FeatureStoreResource,
    LakeResource,
    MlflowTrackingResource,
    ModelRegistryResource,
    nested_run,
    reopened_run,
)
from mlops_assets.storage.models import artifact_digest, load_verified

GROUP = "training"


class TrainingConfig(dg.Config):
    """Which data the run trains on. The sensor and the schedules set `as_of` to the newest data day so that a
    replay is deterministic; empty means the newest day with labels."""

    as_of: str = ""
    trigger: str = "manual"
    # "sweep": a search over families and hyper-parameters; "refit": the champion's recipe (family,
    # hyper-parameters, window, weighting) fit on the newest rows, a fraction of a sweep's cost.
    kind: str = "sweep"


def split_days(frame: pd.DataFrame, spec: DatasetSpec) -> dict[str, pd.DataFrame]:
    """train | validation (the sweep's) | hold-out (the gate's, never trained on), by whole event days."""
    days = sorted(pd.to_datetime(frame["event_day"]).dt.date.unique())
    h, v = spec.training.holdout_days, spec.training.validation_days
    if len(days) < h + v + 1:
        raise dg.Failure(
            f"not enough labelled days to train: {len(days)} (need hold-out {h} + validation {v} + at least 1)"
        )
    holdout_start, valid_start = days[-h], days[-h - v]
    d = pd.to_datetime(frame["event_day"]).dt.date
    return {
        "train": frame[d < valid_start],
        "valid": frame[(d >= valid_start) & (d < holdout_start)],
        "holdout": frame[d >= holdout_start],
    }


def _span(df: pd.DataFrame) -> str:
    d = pd.to_datetime(df["event_day"])
    return f"{d.min().date()} .. {d.max().date()}" if len(df) else "empty"


@dataclass(frozen=True)
class Recipe:
    """What a trained model is, short of its data: enough to fit it again on other rows."""

    family: str
    params: dict[str, Any]
    window_days: int | None
    half_life_days: float | None

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> "Recipe":
        """From a registered version's tags (the champion's recipe, for a refit)."""

        def number(key: str) -> float | None:
            v = tags.get(key)
            return None if v in (None, "", "None", "nan") else float(v)

        window = number("mlops.window_days")
        return cls(
            tags["mlops.family"],
            json.loads(tags.get("mlops.params", "{}")),
            int(window) if window is not None else None,
            number("mlops.half_life_days"),
        )

    @classmethod
    def from_pointer(cls, pointer: dict[str, Any]) -> "Recipe":
        """From `candidate_models`' output (the challenger just judged)."""
        return cls(pointer["family"], dict(pointer["params"]), pointer["window_days"], pointer["half_life_days"])


@dataclass(frozen=True)
class Fitted:
    model: Any
    rows: int
    cpu_seconds: float
    wall_seconds: float


# The rows a recipe is fit on, by where they stop: the validation's start (a fit `validation_days` older than
# the judged one: the freshness probe), the hold-out's start (what the gate judges), or nowhere (what serves).
UNTIL_VALIDATION, UNTIL_HOLDOUT, EVERY_ROW = "validation", "holdout", "all"


def fit_recipe_on(spec: DatasetSpec, frame: pd.DataFrame, recipe: Recipe, *, until: str) -> Fitted:
    """The recipe fit on the training set's rows up to `until` (one of the three cuts above), for either
    task."""
    from threadpoolctl import threadpool_limits

    from mlops_assets.ml.cost import Stopwatch

    if until not in (UNTIL_VALIDATION, UNTIL_HOLDOUT, EVERY_ROW):
        raise ValueError(f"until={until!r}: one of {UNTIL_VALIDATION!r}, {UNTIL_HOLDOUT!r}, {EVERY_ROW!r}")
    days = pd.to_datetime(frame["event_day"]).dt.date
    # the first event day left out (None: none is); split_days also refuses a set too short to split
    left_out = {UNTIL_VALIDATION: "valid", UNTIL_HOLDOUT: "holdout"}.get(until)
    cut = min(pd.to_datetime(split_days(frame, spec)[left_out]["event_day"]).dt.date) if left_out else None
    if spec.task == "ranking":
        from mlops_assets.defs.ranking import day_cutoff, interactions
        from mlops_assets.ml.ranking.models import Recommender
        from mlops_assets.ml.ranking.sweep import RankingSpace

        cutoff = pd.Timestamp(cut) if cut is not None else day_cutoff(max(days))
        seed = RankingSpace.from_dict(spec.search).seed
        with Stopwatch() as sw:
            model = Recommender(
                recipe.family,
                recipe.params,
                window_days=recipe.window_days,
                half_life_days=recipe.half_life_days,
                seed=seed,
            ).fit(interactions(spec, frame), cutoff)
        return Fitted(model, model.n_train, sw.cpu_seconds, sw.wall_seconds)
    from mlops_assets.ml.automl import SearchSpace, fit_recipe

    space = SearchSpace.from_dict(spec.search)
    rows = frame if cut is None else frame[days < cut].reset_index(drop=True)
    with Stopwatch() as sw, threadpool_limits(limits=max(1, space.n_jobs or 1)):
        model, n_rows = fit_recipe(
            rows,
            family=recipe.family,
            params=recipe.params,
            window_days=recipe.window_days,
            half_life_days=recipe.half_life_days,
            target=spec.target.name,
            time_column="event_time",
            numeric=spec.numeric_features,
            categorical=spec.categorical_features,
            task=spec.task,
            seed=space.seed,
            max_rows=space.max_rows,
        )
    return Fitted(model, n_rows, sw.cpu_seconds, sw.wall_seconds)


def log_fitted(spec: DatasetSpec, model: Any, name: str, example: pd.DataFrame, tracking_uri: str) -> tuple[Any, str]:
    """Log a fitted model of either task to the active MLflow run; its model info and the checksum of the
    stored artifact. A tabular model is kept in memory under that checksum (`artifact_digest`), so the
    steps after it in this process verify the artifact without deserializing it again."""
    if spec.task == "ranking":
        from mlops_assets.ml.ranking.models import log_recommender

        info = log_recommender(model, name=name)
        return info, artifact_digest(info.model_uri, tracking_uri)
    from mlops_assets.ml.models import log_model

    info = log_model(model, name=name, input_example=example[spec.feature_names].head(5))
    return info, artifact_digest(info.model_uri, tracking_uri, logged=model)


def build_training(spec: DatasetSpec, settings: Settings) -> dg.Definitions:
    pool = names.store_pool(spec.name, settings.feature_store)

    @dg.asset(
        key_prefix=[spec.name], group_name=GROUP, kinds={"duckdb", "parquet"}, deps=["features", "labels"], pool=pool
    )
    def training_dataset(
        context: dg.AssetExecutionContext,
        config: TrainingConfig,
        feature_store: FeatureStoreResource,
        lake: LakeResource,
    ) -> dg.Output[dict[str, Any]]:
        """Every label that had arrived by `as_of`, joined as of its event time to its entity's features, and
        written once to the lake under its content hash: the hash is the lineage a registered model carries."""
        ds = spec
        store = feature_store.store(spec)
        with store.session():  # one open of the store for the whole step
            as_of = dt.date.fromisoformat(config.as_of) if config.as_of else None
            if as_of is None:
                as_of = store.last_arrival_day()  # reads the labels alone (on Parquet: not every table's files)
                if as_of is None:
                    raise dg.Failure("no labels in the feature store yet: nothing to train on")
            frame = store.training_frame(as_of)
            parts = split_days(frame, ds)
            key, sha = lake.lake().write_frame("datasets", ds.name, None, frame)
            pointer = {
                "as_of": as_of.isoformat(),
                "trigger": config.trigger,
                "kind": config.kind,
                "key": key,
                "sha256": sha,
                "rows": len(frame),
                "spans": {k: _span(v) for k, v in parts.items()},
                "spec_hash": ds.spec_hash,
            }
            context.log.info(
                f"training set as of {as_of}: {len(frame)} rows, "
                + ", ".join(f"{k} {len(v)} ({_span(v)})" for k, v in parts.items())
            )
            return dg.Output(
                pointer,
                metadata={
                    "dagster/row_count": len(frame),
                    "as_of": as_of.isoformat(),
                    "trigger": config.trigger,
                    "retrain_kind": config.kind,
                    "sha256": sha,
                    "path": dg.MetadataValue.path(lake.lake().uri(key)),
                    **{f"rows_{k}": len(v) for k, v in parts.items()},
                    **{f"span_{k}": _span(v) for k, v in parts.items()},
                    "target_mean": float(frame[ds.target.name].mean()),
                },
            )

    @dg.asset(key_prefix=[spec.name], group_name=GROUP, kinds={"mlflow", "scikitlearn"})
    def candidate_models(
        context: dg.AssetExecutionContext,
        training_dataset: dict[str, Any],
        mlflow: MlflowTrackingResource,
        lake: LakeResource,
        registry: ModelRegistryResource,
    ) -> dg.Output[dict[str, Any]]:
        """A budgeted search over model families, hyper-parameters and training windows; every trial is a
        nested MLflow run under this Dagster run's MLflow run, and the leaderboard is in the metadata."""
        ds = spec
        kind = training_dataset.get("kind", "sweep")
        tags = {"dagster_run_id": context.run_id, "mlops.dataset": ds.name, "mlops.retrain_kind": kind}
        with mlflow.run(ds.name, run_name=f"{kind}-{training_dataset['as_of']}", tags=tags) as parent:
            context.log.info(f"MLflow run {parent.info.run_id} in experiment {ds.name}")
            if kind == "refit":
                champion = registry.champion_info(ds.model_name)
                if champion is not None and not champion.is_baseline and champion.tags.get("mlops.family"):
                    return _refit(
                        context,
                        training_dataset,
                        lake,
                        registry,
                        parent.info.run_id,
                        {**champion.tags, "mlops.version": champion.version},
                    )
                context.log.warning("refit asked for, but the champion has no trained recipe: running a sweep")
            return _sweep(context, training_dataset, lake, registry, parent.info.run_id)

    def _budget_failure(exc: Exception, kind: str) -> dg.Failure:
        from mlops_assets.ml.cost import CPUBudgetExceeded

        assert isinstance(exc, CPUBudgetExceeded)
        return dg.Failure(
            description=str(exc),
            metadata={"retrain_kind": kind, "cpu_seconds": round(exc.spent, 2), "max_cpu_seconds": exc.budget},
        )

    def _refit(
        context: dg.AssetExecutionContext,
        training_dataset: dict[str, Any],
        lake: LakeResource,
        registry: ModelRegistryResource,
        run_id: str,
        recipe_tags: dict[str, str],
    ) -> dg.Output[dict[str, Any]]:
        """The champion's recipe fit once on every row before the hold-out (train + validation, as the sweep's
        winner is refit): no search, so its validation score is not measured; the gate judges it on the same
        hold-out as any challenger."""
        import mlflow as mlflow_lib

        from mlops_assets.ml.cost import CPUBudgetExceeded, check_budget

        ds = spec
        frame = lake.lake().read_frame(training_dataset["key"], expected_sha256=training_dataset["sha256"])
        recipe = Recipe.from_tags(recipe_tags)
        fitted = fit_recipe_on(ds, frame, recipe, until=UNTIL_HOLDOUT)
        try:
            check_budget(f"refit of {recipe.family}", fitted.cpu_seconds, ds.policy.cost.max_cpu_seconds)
        except CPUBudgetExceeded as exc:
            raise _budget_failure(exc, "refit") from exc
        mlflow_lib.log_params({"as_of": training_dataset["as_of"], "kind": "refit", "family": recipe.family})
        mlflow_lib.log_metrics(
            {"cpu_seconds": fitted.cpu_seconds, "wall_seconds": fitted.wall_seconds, "n_train": fitted.rows}
        )
        info, model_sha = log_fitted(ds, fitted.model, "model", split_days(frame, ds)["valid"], registry.tracking_uri)
        context.log.info(f"refit {recipe.family} on {fitted.rows} rows: {fitted.cpu_seconds:.1f} CPU-s")
        pointer = {
            "model_uri": info.model_uri,
            "model_sha256": model_sha,
            "run_id": run_id,
            "family": recipe.family,
            "params": recipe.params,
            "window_days": recipe.window_days,
            "half_life_days": recipe.half_life_days,
            "valid_score": float("nan"),
            "metric": ds.metric,
            "cpu_seconds": fitted.cpu_seconds,
            "wall_seconds": fitted.wall_seconds,
            "trials": 0,
            "dataset_sha256": training_dataset["sha256"],
            "kind": "refit",
            "recipe_from": str(recipe_tags.get("mlops.version", "")),
        }
        return dg.Output(
            pointer,
            metadata={
                "retrain_kind": "refit",
                "best_family": recipe.family,
                "best_window_days": str(recipe.window_days),
                "trials": 0,
                "refit_rows": fitted.rows,
                "cpu_seconds": round(fitted.cpu_seconds, 2),
                "wall_seconds": round(fitted.wall_seconds, 2),
                "recipe_from": f"champion v{recipe_tags.get('mlops.version', '?')} "
                f"(trained as of {recipe_tags.get('mlops.training_as_of', '?')})",
                "mlflow_run_id": str(run_id),
                "model_sha256": model_sha,
            },
        )

    def _sweep(
        context: dg.AssetExecutionContext,
        training_dataset: dict[str, Any],
        lake: LakeResource,
        registry: ModelRegistryResource,
        sweep_run_id: str,
    ) -> dg.Output[dict[str, Any]]:
        """The sweep inside the step's MLflow run: every trial a nested run of it."""
        import mlflow as mlflow_lib

        ds = spec
        frame = lake.lake().read_frame(training_dataset["key"], expected_sha256=training_dataset["sha256"])
        parts = split_days(frame, ds)
        if ds.task == "ranking":  # recommenders: ml/ranking, through defs/ranking.py
            from mlops_assets.defs import ranking

            return ranking.sweep(context, ds, frame, parts, training_dataset, registry, sweep_run_id)
        # scikit-learn and the sweep are imported by the step that trains, not by every process that loads the
        # definitions (a code server of ten datasets loads in half the time without them)
        from mlops_assets.ml.automl import SearchSpace, TrialResult, run_sweep, sweep_pointer
        from mlops_assets.ml.models import log_model

        space = SearchSpace.from_dict(ds.search)
        mlflow_lib.log_params(
            {
                "as_of": training_dataset["as_of"],
                "trigger": training_dataset["trigger"],
                "dataset_sha256": training_dataset["sha256"][:16],
                "trials_budget": space.trials,
                "seconds_budget": space.seconds,
            }
        )

        from mlops_assets.ml.cost import CPUBudgetExceeded, check_budget

        spent = [0.0]

        def on_trial(t: TrialResult) -> None:
            spent[0] += t.cpu_seconds
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
                        **({ds.metric: t.score} if t.score is not None else {}),
                    }
                )
                mlflow_lib.set_tags(
                    {
                        "state": t.state,
                        "dataset_sha256": training_dataset["sha256"],
                        **({"error": t.error[:500]} if t.error else {}),
                    }
                )
            score = f"{t.score:.4f}" if t.score is not None else "-"
            context.log.info(
                f"trial {t.number}: {t.family} window={t.window_days} {t.state} {ds.metric}={score} "
                f"({t.wall_seconds:.1f}s wall, {t.cpu_seconds:.1f}s CPU)"
            )
            # checked trial by trial: the sweep stops at the first trial that takes it over its budget
            check_budget(f"sweep after trial {t.number}", spent[0], ds.policy.cost.max_cpu_seconds)

        try:
            result = run_sweep(
                parts["train"],
                parts["valid"],
                target=ds.target.name,
                time_column="event_time",
                numeric=ds.numeric_features,
                categorical=ds.categorical_features,
                task=ds.task,
                metric=ds.metric,
                space=space,
                on_trial=on_trial,
            )
            check_budget("sweep with its refit", result.cpu_seconds, ds.policy.cost.max_cpu_seconds)
        except CPUBudgetExceeded as exc:
            raise _budget_failure(exc, "sweep") from exc
        best = result.best
        example = parts["valid"][ds.feature_names].head(5)
        info = log_model(result.best_model, name="model", input_example=example)
        model_sha = artifact_digest(info.model_uri, registry.tracking_uri, logged=result.best_model)
        mlflow_lib.log_metrics(
            {
                f"best_{ds.metric}": float(best.score or 0.0),
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
            metric=ds.metric,
            dataset_sha256=training_dataset["sha256"],
        ) | {"kind": "sweep"}
        return dg.Output(
            pointer,
            metadata={
                "retrain_kind": "sweep",
                "best_family": best.family,
                f"best_valid_{ds.metric}": float(best.score or 0.0),
                "best_window_days": str(best.window_days),
                "trials": len(result.trials),
                "trials_pruned": int(sum(t.state == "pruned" for t in result.trials)),
                "trials_failed": int(sum(t.state == "failed" for t in result.trials)),
                "refit_rows": result.refit_rows,
                "trial_threads": result.workers,
                "cpu_seconds": round(result.cpu_seconds, 2),
                "wall_seconds": round(result.wall_seconds, 2),
                "leaderboard": dg.MetadataValue.md(board.head(20).to_markdown(index=False)),
                "mlflow_run_id": str(sweep_run_id),
                "model_sha256": model_sha,
            },
        )

    @dg.asset(key_prefix=[spec.name], group_name=GROUP, kinds={"evidently"})
    def evaluation_report(
        context: dg.AssetExecutionContext,
        training_dataset: dict[str, Any],
        candidate_models: dict[str, Any],
        lake: LakeResource,
        registry: ModelRegistryResource,
    ) -> dg.Output[dict[str, Any]]:
        """Challenger against champion on the same hold-out (the newest labelled days, which neither trained
        on): a paired bootstrap interval for the difference, per-slice metrics, and the gate's decision. A
        promoted recipe is then fit on every row, its hold-out included, and that fit is what registers and
        serves (`training.refit_on_holdout`)."""
        ds = spec
        frame = lake.lake().read_frame(training_dataset["key"], expected_sha256=training_dataset["sha256"])
        challenger = load_verified(
            candidate_models["model_uri"], candidate_models["model_sha256"], registry.tracking_uri
        ).model
        champion = registry.champion_info(ds.model_name)
        # A refit of the recipe of the champion still in production only has to be not worse (ml/promote.py).
        refit_of_champion = (
            candidate_models.get("kind") == "refit"
            and champion is not None
            and candidate_models.get("recipe_from") == champion.version
        )
        if ds.task == "ranking":  # lists judged day by day on the hold-out (defs/ranking.py)
            from mlops_assets.defs import ranking

            judged = ranking.evaluation_output(
                context,
                ds,
                frame,
                challenger,
                champion,
                registry,
                refit_of_champion=refit_of_champion,
            )
            pointer, metadata = judged.value, dict(judged.metadata)
        else:
            pointer, metadata = _tabular_evaluation(
                context, frame, challenger, champion, lake, registry, training_dataset, refit_of_champion
            )
        decision = pointer["decision"]
        probe = _freshness_probe(context, frame, candidate_models, challenger)
        probe_cpu = probe.pop("freshness_cpu_seconds") if probe else 0.0  # counted in cpu_seconds below
        served = _served_fit(context, frame, candidate_models, decision, registry)
        cpu = float(candidate_models["cpu_seconds"]) + (served["cpu_seconds"] if served else 0.0) + probe_cpu
        return dg.Output(
            {**pointer, "served": served},
            metadata={
                **metadata,
                "as_of": training_dataset["as_of"],
                "retrain_kind": candidate_models.get("kind", "sweep"),
                "refit_of_champion": refit_of_champion,
                **(probe or {}),
                # the retrain's whole cost, the served fit included: what the cost-aware policy prices
                "cpu_seconds": round(cpu, 2),
                "served_fit": f"recipe refit on {served['rows']} rows through {training_dataset['as_of']} "
                f"({served['cpu_seconds']:.1f} CPU-s)"
                if served
                else "the judged model (not promoted, or refit_on_holdout off, or awaiting approval)",
            },
        )

    def _freshness_probe(
        context: dg.AssetExecutionContext, frame: pd.DataFrame, candidate_models: dict[str, Any], challenger: Any
    ) -> dict[str, Any] | None:
        """How fast this recipe goes stale here, measured at every sweep: the winner fit `validation_days`
        earlier (on the rows before the validation) against the judged fit, on the same hold-out. The
        cost-aware policy reads the gain per day as its staleness rate before any refit has measured one (a
        first model has nothing else to go on), and beside the refits' gains after."""
        ds = spec
        if candidate_models.get("kind", "sweep") != "sweep" or ds.policy.decision != "cost":
            return None
        try:
            older = fit_recipe_on(ds, frame, Recipe.from_pointer(candidate_models), until=UNTIL_VALIDATION)
        except ValueError as exc:  # no rows before the validation in the recipe's window
            context.log.info(f"freshness probe skipped: {exc}")
            return None
        if ds.task == "ranking":
            from mlops_assets.defs.ranking import paired_on_holdout

            c = paired_on_holdout(ds, frame, challenger, older.model)
        else:
            from mlops_assets.ml.evaluate import compare_models
            from mlops_assets.ml.models import predict_scores

            holdout = split_days(frame, ds)["holdout"]
            X = holdout[ds.feature_names]
            c = compare_models(
                holdout[ds.target.name].to_numpy(),
                predict_scores(challenger, X),
                predict_scores(older.model, X),
                metric=ds.metric,
                confidence=ds.gate.confidence,
            )
        days = ds.training.validation_days
        context.log.info(
            f"freshness probe: the recipe fit {days} days earlier scores {ds.metric} {c.champion:.4f} against "
            f"{c.challenger:.4f} on the hold-out ({c.delta:+.4f}, {c.delta / days:+.5f} a day)"
        )
        return {
            "freshness_gain": float(c.delta),
            "freshness_ci": f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}]",
            "freshness_days": days,
            "freshness_gain_per_day": float(c.delta) / days,
            "freshness_cpu_seconds": older.cpu_seconds,
        }

    def _served_fit(
        context: dg.AssetExecutionContext,
        frame: pd.DataFrame,
        candidate_models: dict[str, Any],
        decision: dict[str, Any],
        registry: ModelRegistryResource,
    ) -> dict[str, Any] | None:
        """The judged recipe fit on every row through `as_of`, logged beside the judged model in the retrain's
        MLflow run. Not for a version awaiting approval: the approval re-judges the registered model on the
        hold-out of its day, which a model fit on its own hold-out would pass on its training rows."""
        ds = spec
        if not (ds.training.refit_on_holdout and decision["promote"] and decision["status"] != "pending_approval"):
            return None
        import mlflow as mlflow_lib

        from mlops_assets.ml.cost import CPUBudgetExceeded, check_budget

        fitted = fit_recipe_on(ds, frame, Recipe.from_pointer(candidate_models), until=EVERY_ROW)
        try:
            total = float(candidate_models["cpu_seconds"]) + fitted.cpu_seconds
            check_budget("retrain with its served fit", total, ds.policy.cost.max_cpu_seconds)
        except CPUBudgetExceeded as exc:
            raise _budget_failure(exc, str(candidate_models.get("kind", "sweep"))) from exc
        with reopened_run(registry.tracking_uri, candidate_models["run_id"]):
            info, sha = log_fitted(ds, fitted.model, "served_model", frame, registry.tracking_uri)
            mlflow_lib.log_metrics({"served_fit_cpu_seconds": fitted.cpu_seconds, "served_fit_rows": fitted.rows})
        context.log.info(
            f"promoted recipe refit on every row through the hold-out: {fitted.rows} rows, "
            f"{fitted.cpu_seconds:.1f} CPU-s; this fit serves"
        )
        return {
            "model_uri": info.model_uri,
            "model_sha256": sha,
            "rows": fitted.rows,
            "cpu_seconds": fitted.cpu_seconds,
        }

    def _tabular_evaluation(
        context: dg.AssetExecutionContext,
        frame: pd.DataFrame,
        challenger: Any,
        champion: Any,
        lake: LakeResource,
        registry: ModelRegistryResource,
        training_dataset: dict[str, Any],
        refit_of_champion: bool,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        ds = spec
        from mlops_assets.ml.evaluate import performance_html

        holdout = split_days(frame, ds)["holdout"].reset_index(drop=True)
        # The same gate an approval re-runs (registry/gate.py); the champion compared with here is recorded so
        # that the alias moves only if it still names this version (compare-and-set in the champion asset).
        outcome = judge(
            ds,
            holdout,
            challenger,
            champion,
            registry,
            refit_of_champion=refit_of_champion,
        )
        comparison, decision = outcome.comparison, outcome.decision
        context.log.info(f"gate: {decision.status}: {decision.reason}")
        as_of = dt.date.fromisoformat(str(training_dataset["as_of"]))
        report: dict[str, Any]
        if refit_of_champion and decision.promote and not report_day(ds, as_of):
            # A routine refit the gate let through may run every other day: its HTML follows the monitoring
            # cadence (the gate's figures are in the metadata either way). Sweeps and refused refits get one.
            report = {"evidently_report": "a refit the gate passed: its HTML report on the monitoring cadence"}
        else:
            report = publish(
                lake.lake(),
                ds.name,
                "evidently_report",
                f"evaluation_{training_dataset['as_of']}_{context.run_id[:8]}.html",
                lambda p: performance_html(
                    holdout.assign(prediction=outcome.challenger_scores),
                    target=ds.target.name,
                    prediction="prediction",
                    task=ds.task,
                    path=p,
                ),
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
        metadata = {
            # a gain over the baseline says nothing of how fast a trained model goes stale
            "against_baseline": bool(champion is None or champion.is_baseline),
            "decision": decision.status,
            "promote": decision.promote,
            "reason": decision.reason,
            f"challenger_{ds.metric}": float(comparison.challenger),
            f"champion_{ds.metric}": float(comparison.champion),
            "delta": float(comparison.delta),
            "delta_ci": f"[{comparison.ci_low:+.4f}, {comparison.ci_high:+.4f}]",
            "p_value": float(comparison.p_value),
            "holdout_rows": len(holdout),
            "champion_version": champion.version if champion else "none",
            "slices": dg.MetadataValue.md(comparison.slices.round(4).to_markdown(index=False))
            if len(comparison.slices)
            else "no slice with enough rows",
            **report,
        }
        return pointer, metadata

    return dg.Definitions(assets=[training_dataset, candidate_models, evaluation_report])
