"""The registry: every challenger becomes a version with its lineage; the `champion` alias moves only when
the gate says so. Until the first trained model, a baseline version holds the alias."""

import json
import os
import subprocess
from functools import lru_cache
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from mlops_assets.config import PROJECT_ROOT, DatasetSpec, Settings
from mlops_assets.defs import names
from mlops_assets.defs.monitoring.assets import profiled_columns
from mlops_assets.defs.registry.gate import JUDGED_SHA_TAG, JUDGED_URI_TAG, TRAINED_THROUGH_TAG
from mlops_assets.defs.resources import (
    FeatureStoreResource,
    LakeResource,
    ModelRegistryResource,
    MoveOutcome,
)
from mlops_assets.defs.training.assets import split_days
from mlops_assets.ml.drift import ReferenceProfile
from mlops_assets.serving.compiled import SCORER_REASON_TAG, SCORER_TAG, registration_tags
from mlops_assets.serving.scoring import scorer_tags
from mlops_assets.storage.models import artifact_digest

GROUP = "registry"
# A recommender is served by GET /recommend from its own fitted lists: the tabular compiled scorer has nothing to
# compile.
RANKING_SCORER_TAGS = {SCORER_TAG: "plain", SCORER_REASON_TAG: "ranking models are served by /recommend"}


@lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit the code runs from (MLOPS_CODE_VERSION overrides it where there is no checkout)."""
    if os.environ.get("MLOPS_CODE_VERSION"):
        return os.environ["MLOPS_CODE_VERSION"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def history_table(history: list[dict[str, Any]]) -> str:
    """The champion's moves, newest first, as the table the UI shows on the champion asset."""
    if not history:
        return "no champion moves yet"
    frame = pd.DataFrame(history[::-1])
    core = [c for c in ("version", "previous", "kind", "reason", "actor", "data_day", "at") if c in frame]
    return frame[[*core, *(c for c in frame.columns if c not in core)]].to_markdown(index=False)


def champion_metadata(registry: ModelRegistryResource, model_name: str) -> dict[str, Any]:
    """What every champion materialization carries, whoever moved the alias (the gate, an approval, a
    rollback): the version in production and the history of moves, so the asset's page tells the whole story."""
    now = registry.champion_info(model_name)
    history = registry.history(model_name)
    last = history[-1] if history else {}
    return {
        "champion_version": now.version if now else "none",
        "champion_model_sha256": now.model_sha256 if now else "none",
        "champion_holdout_metric": now.holdout_metric if now and now.holdout_metric is not None else float("nan"),
        "last_move_kind": str(last.get("kind", "")),
        "last_move_actor": str(last.get("actor", "")),
        "last_move_reason": str(last.get("reason", "")),
        "history": dg.MetadataValue.md(history_table(history)),
    }


def register_version(
    registry: ModelRegistryResource,
    spec: DatasetSpec,
    model_uri: str,
    run_id: str | None,
    tags: dict[str, str],
) -> Any:
    import mlflow

    registry.ensure_model(spec.model_name)
    mlflow.set_tracking_uri(registry.tracking_uri)
    mv = registry.client.create_model_version(spec.model_name, source=model_uri, run_id=run_id, tags=tags)
    return mv


def _baseline_frame(spec: DatasetSpec) -> tuple[pd.DataFrame, np.ndarray]:
    """Two placeholder rows to fit the prior on when no label exists yet: the baseline then scores every
    event alike, which is exactly what 'no model yet' means."""
    row = {c: (0.0 if c in spec.numeric_features else "unknown") for c in spec.feature_names}
    y = np.array([0, 1]) if spec.task == "classification" else np.array([0.0, 0.0])
    return pd.DataFrame([row, row]), y


def stale_tags(outcome: MoveOutcome) -> dict[str, str]:
    """The version a stale gate judged is marked so, with why: `approve` accepts it, and re-runs the gate
    against the champion of the moment."""
    return {"mlops.gate": "stale", "mlops.gate_reason": outcome.reason[:500]}


def build_registry(spec: DatasetSpec, settings: Settings) -> dg.Definitions:
    # Every step that moves the alias is in the dataset's registry pool (limit 1 by the instance's default), so
    # two runs' moves queue in Dagster instead of at the store lock that `move_champion` takes anyway.
    registry_pool = names.pool(spec.name, "registry")
    # The baseline also reads the embedded feature store, whose pool it must hold instead (a step has one pool);
    # its move is still serialized by the store lock `move_champion` takes.
    store_pool = names.store_pool(spec.name, settings.feature_store)

    @dg.asset(
        key_prefix=[spec.name],
        group_name=GROUP,
        kinds={"mlflow"},
        deps=["lookup_tables"],
        pool=store_pool or registry_pool,
    )
    def baseline_model(
        context: dg.AssetExecutionContext,
        feature_store: FeatureStoreResource,
        registry: ModelRegistryResource,
    ) -> dg.MaterializeResult:
        """A prior-only model that holds the champion alias until the first trained model beats it, so that
        predictions are served from day one."""
        import mlflow

        ds = spec
        current = registry.champion_info(ds.model_name)
        if current is not None:
            return dg.MaterializeResult(
                metadata={"registered": False, "reason": f"champion exists (v{current.version})"}
            )
        extra: dict[str, str] = {}
        if ds.task == "ranking":  # the bandage: item-item CF over the interactions so far (defs/ranking.py)
            from mlops_assets.defs import ranking

            fitted = ranking.bandage(context, ds, feature_store.store(spec), registry)
            if fitted is None:
                why = "no interactions yet: the bandage is fit on the interactions so far, after the first day"
                context.log.info(why)
                return dg.MaterializeResult(metadata={"registered": False, "reason": why})
            model_uri, run_id, sha, fitted_on = (
                fitted["model_uri"],
                fitted["run_id"],
                fitted["sha256"],
                fitted["fitted_on"],
            )
            extra = {
                "mlops.family": fitted["family"],
                "mlops.training_as_of": fitted["as_of"],
                **RANKING_SCORER_TAGS,
            }
        else:
            frame = feature_store.store(spec).training_frame(pd.Timestamp.max.date())
            if len(frame):
                X, y = frame[ds.feature_names], frame[ds.target.name].to_numpy()
                fitted_on = f"{len(frame)} labelled rows"
            else:
                X, y = _baseline_frame(ds)
                fitted_on = "no labels yet (uninformative prior)"
            from mlops_assets.ml.models import build_model, log_model  # scikit-learn, paid by this step only

            model = build_model(
                "baseline",
                {},
                task=ds.task,
                numeric=ds.numeric_features,
                categorical=ds.categorical_features,
                seed=0,
            ).fit(X, y)
            from mlops_assets.defs.resources import ensure_experiment

            mlflow.set_tracking_uri(registry.tracking_uri)
            exp_root = registry.artifact_root
            experiment_id = ensure_experiment(registry.tracking_uri, ds.name, exp_root)
            with mlflow.start_run(experiment_id=experiment_id, run_name="baseline") as run:
                info = log_model(model, name="model", input_example=X.head(2))
                mlflow.set_tags({"mlops.role": "baseline", "dagster_run_id": context.run_id})
            sha = artifact_digest(info.model_uri, registry.tracking_uri)
            model_uri, run_id = info.model_uri, run.info.run_id
            extra = registration_tags(model, X, ds.numeric_features, ds.categorical_features)
        mv = register_version(
            registry,
            ds,
            model_uri,
            run_id,
            {
                **extra,
                "mlops.is_baseline": "true",
                "mlops.metric": ds.metric,
                "mlops.model_sha256": sha,
                "mlops.fitted_on": fitted_on,
                "mlops.code_version": code_version(),
                "mlops.spec_hash": ds.spec_hash,
                "mlops.dagster_run_id": context.run_id,
                "mlops.gate": "first_model",
            },
        )
        outcome = registry.move_champion(
            ds.model_name,
            str(mv.version),
            reason=f"baseline until a trained model ({fitted_on})",
            actor="baseline_model",
            kind="baseline",
            expected_previous=None,  # a baseline never replaces a champion that appeared meanwhile
        )
        if not outcome.moved:
            context.log.warning(f"baseline v{mv.version} registered but not champion: {outcome.reason}")
        else:
            context.log.info(f"registered baseline v{mv.version} as champion ({fitted_on})")
        return dg.MaterializeResult(
            metadata={
                "registered": True,
                "version": str(mv.version),
                "fitted_on": fitted_on,
                "champion": outcome.moved,
                **({"reason": outcome.reason} if not outcome.moved else {}),
            }
        )

    @dg.asset(key_prefix=[spec.name], group_name=GROUP, kinds={"mlflow"})
    def registered_model_version(
        context: dg.AssetExecutionContext,
        training_dataset: dict[str, Any],
        candidate_models: dict[str, Any],
        evaluation_report: dict[str, Any],
        lake: LakeResource,
        registry: ModelRegistryResource,
    ) -> dg.Output[dict[str, Any]]:
        """The challenger as a registry version, promoted or not, with the lineage that leads back to exactly
        the data, spec and code that made it, and the reference profile drift is measured against."""
        ds = spec
        lk = lake.lake()
        frame = lk.read_frame(training_dataset["key"], expected_sha256=training_dataset["sha256"])
        # What registers is what will serve: the promoted recipe's fit on every row when there is one
        # (`evaluation_report`), else the judged model. Drift is measured against the rows it trained on.
        served = evaluation_report.get("served")
        model_uri = served["model_uri"] if served else candidate_models["model_uri"]
        model_sha = served["model_sha256"] if served else candidate_models["model_sha256"]
        train = frame if served else split_days(frame, ds)["train"]
        numeric, categorical = profiled_columns(train, ds)
        untested = sorted({*ds.numeric_features, *ds.categorical_features} - {*numeric, *categorical})
        if untested:  # an early model: its 7-day rates had no labelled days yet
            context.log.warning(f"no values to profile for drift in {untested}: drift is not tested on them")
        profile = ReferenceProfile.from_frame(train, numeric=numeric, categorical=categorical)
        prof_key, prof_sha = lk.write_blob("profiles", ds.name, profile.to_json().encode(), ".json")
        decision = evaluation_report["decision"]
        tags = {
            "mlops.is_baseline": "false",
            "mlops.metric": ds.metric,
            "mlops.holdout_metric": f"{evaluation_report['challenger_holdout']:.6f}",
            "mlops.valid_metric": f"{candidate_models['valid_score']:.6f}",
            "mlops.model_sha256": model_sha,
            # the fit the gate judged: what later gates compare their challengers with (registry/gate.py)
            JUDGED_URI_TAG: candidate_models["model_uri"],
            JUDGED_SHA_TAG: candidate_models["model_sha256"],
            **({TRAINED_THROUGH_TAG: training_dataset["as_of"]} if served else {}),
            "mlops.served_fit": f"every labelled row through {training_dataset['as_of']} ({served['rows']} rows)"
            if served
            else "the judged model (rows before the hold-out)",
            "mlops.family": candidate_models["family"],
            "mlops.window_days": str(candidate_models["window_days"]),
            "mlops.half_life_days": str(candidate_models["half_life_days"]),
            "mlops.params": json.dumps(candidate_models["params"], default=str),
            "mlops.training_dataset_key": training_dataset["key"],
            "mlops.training_dataset_sha256": training_dataset["sha256"],
            "mlops.training_as_of": training_dataset["as_of"],
            # Everything `FeatureStore.training_frame` needs to rebuild the exact rows: the set is every label
            # arrived by `as_of` (no lower bound yet), so `since` is recorded as null.
            "mlops.training_window": json.dumps(
                {
                    "as_of": training_dataset["as_of"],
                    "since": training_dataset.get("since"),
                    "train": training_dataset["spans"].get("train"),
                    "valid": training_dataset["spans"].get("valid"),
                    "holdout": training_dataset["spans"].get("holdout"),
                }
            ),
            "mlops.training_spans": str(training_dataset["spans"]),
            "mlops.spec_hash": ds.spec_hash,
            "mlops.code_version": code_version(),
            "mlops.dagster_run_id": context.run_id,
            "mlops.sweep_run_id": str(candidate_models["run_id"]),
            "mlops.reference_profile_key": prof_key,
            "mlops.reference_profile_sha256": prof_sha,
            "mlops.drift_untested": ",".join(untested),
            "mlops.gate": decision["status"],
            "mlops.gate_reason": decision["reason"][:500],
            # The champion the gate compared against ("none": no champion yet): the alias moves to this
            # version only if it still names that one.
            "mlops.compared_with": str(evaluation_report["champion_version"] or "none"),
            "mlops.cpu_seconds": f"{candidate_models['cpu_seconds'] + (served['cpu_seconds'] if served else 0):.2f}",
            # How the online API will score it: compiled only if proven equal on this hold-out.
            **(
                scorer_tags(
                    model_uri,
                    model_sha,
                    registry.tracking_uri,
                    split_days(frame, ds)["holdout"],
                    ds,
                )
                if ds.task != "ranking"
                else RANKING_SCORER_TAGS
            ),
            "mlops.retrain_kind": str(candidate_models.get("kind", "sweep")),
            "mlops.retrain_reason": str(context.run.tags.get("mlops/reason", "manual"))[:500],
        }
        mv = register_version(registry, ds, model_uri, candidate_models["run_id"], tags)
        context.log.info(f"registered {ds.model_name} v{mv.version} (gate: {decision['status']})")
        return dg.Output(
            {
                "version": str(mv.version),
                "gate": decision,
                "holdout_metric": evaluation_report["challenger_holdout"],
                "compared_with": evaluation_report["champion_version"],
            },
            metadata={
                "version": str(mv.version),
                "gate": decision["status"],
                "model_sha256": model_sha,
                "served_fit": tags["mlops.served_fit"],
                "training_dataset_sha256": training_dataset["sha256"],
                "code_version": code_version(),
                "reference_profile": dg.MetadataValue.path(lk.uri(prof_key)),
            },
        )

    @dg.asset(
        key_prefix=[spec.name],
        group_name=GROUP,
        kinds={"mlflow"},
        deps=["baseline_model"],
        pool=registry_pool,
        check_specs=[
            dg.AssetCheckSpec(
                "champion_loads",
                asset=names.asset_key(spec.name, "champion"),
                description="The alias resolves and its artifact matches its checksum.",
            ),
            dg.AssetCheckSpec(
                "gate_applied",
                asset=names.asset_key(spec.name, "champion"),
                description=(
                    "The gate's decision (promoted, rejected, pending approval) was applied to the champion it "
                    "compared against. Warns when the champion moved since the evaluation and the promotion "
                    "was refused as stale."
                ),
            ),
        ],
    )
    def champion(
        context: dg.AssetExecutionContext,
        registered_model_version: dict[str, Any],
        registry: ModelRegistryResource,
    ) -> dg.MaterializeResult:
        """The production model: the alias moves to the new version only when the gate promoted it (or a
        person approved it), and only if it still names the champion the gate compared against; every move is
        recorded so that a rollback knows where to go back to.

        A promotion refused as stale (another run moved the alias after this run's evaluation) still
        materializes, with `decision: stale`, `moved: False`, the reason, and a failing `gate_applied` check
        at warning severity; the run does not fail. Failing it would be wrong three ways: nothing broke (two
        retrains racing is normal, and the refusal is the system working); a retry would re-run this step on
        the same stale evaluation and be refused again; and the asset's page would lose the materialization
        that shows which champion is in production. The version is tagged `stale` so a person can approve it,
        which re-runs the gate against the champion of that moment."""
        ds = spec
        gate = registered_model_version["gate"]
        version = registered_model_version["version"]
        before = registry.champion_info(ds.model_name)
        moved, decision, reason, lock = False, str(gate["status"]), str(gate["reason"]), ""
        compared_with = registered_model_version.get("compared_with", "unknown")
        if gate["promote"] and gate["status"] != "pending_approval":
            # Verify before the move, not after: a candidate whose artifact no longer matches its checksum
            # fails this step and the alias stays where it was.
            candidate = registry.version_info(ds.model_name, version)
            if candidate is None:
                raise dg.Failure(f"{ds.model_name} v{version} is not in the registry: the champion stays")
            try:
                registry.load_champion(candidate)
            except Exception as exc:
                raise dg.Failure(
                    f"{ds.model_name} v{version} does not load: {exc}; the champion stays "
                    f"v{before.version if before else '-'}"
                ) from exc
            outcome = registry.move_champion(
                ds.model_name,
                version,
                reason=gate["reason"],
                actor=f"dagster run {context.run_id[:8]}",
                data_day=context.run.tags.get("mlops/as_of"),
                kind="promote",
                expected_previous=compared_with,
            )
            moved, lock = outcome.moved, outcome.lock
            if moved:
                context.log.info(f"champion moved to v{version}: {gate['reason']}")
            else:
                decision, reason = "stale", outcome.reason
                for key, value in stale_tags(outcome).items():
                    registry.client.set_model_version_tag(ds.model_name, version, key, value)
                context.log.warning(f"champion not moved: {reason}")
        else:
            context.log.info(f"champion stays v{before.version if before else '-'}: {gate['status']}: {gate['reason']}")
        now = registry.champion_info(ds.model_name)
        passed, problem = True, "ok"
        try:
            if now is not None:
                registry.load_champion(now)
        except Exception as exc:
            passed, problem = False, str(exc)
        return dg.MaterializeResult(
            metadata={
                **champion_metadata(registry, ds.model_name),
                "moved": moved,
                "candidate_version": version,
                "gate": gate["status"],
                "decision": decision,
                "reason": reason,
                "compared_with": str(compared_with or "none"),
                "registry_lock": lock or "not needed",
            },
            check_results=[
                dg.AssetCheckResult(check_name="champion_loads", passed=passed, metadata={"detail": problem}),
                dg.AssetCheckResult(
                    check_name="gate_applied",
                    passed=decision != "stale",
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"decision": decision, "candidate_version": version, "reason": reason},
                ),
            ],
        )

    return dg.Definitions(assets=[baseline_model, registered_model_version, champion])
