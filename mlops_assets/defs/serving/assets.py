"""Batch predictions: the champion of the moment scores the day's feature rows, and the log is kept so that
the performance report can score what was actually served once labels arrive."""

import dagster as dg
import numpy as np
import pandas as pd

from mlops_assets.config import DatasetSpec, Settings
from mlops_assets.defs import names
from mlops_assets.defs.partitions import daily_partitions, partition_day
from mlops_assets.defs.resources import FeatureStoreResource, ModelRegistryResource

GROUP = "serving"


def build_serving(spec: DatasetSpec, settings: Settings) -> dg.Definitions:
    pool = names.store_pool(spec.name, settings.feature_store)
    partitions = daily_partitions(spec)

    @dg.asset(
        key_prefix=[spec.name],
        partitions_def=partitions,
        group_name=GROUP,
        kinds={"duckdb", "mlflow"},
        deps=["features", "champion"],
        pool=pool,
    )
    def batch_predictions(
        context: dg.AssetExecutionContext,
        feature_store: FeatureStoreResource,
        registry: ModelRegistryResource,
    ) -> dg.MaterializeResult:
        """Scores from the model the `champion` alias names at run time (verified against its checksum), with
        the version written beside every score."""
        ds = spec
        day = partition_day(context)
        store = feature_store.store(spec)
        with store.session():  # one open of the store for the whole step
            if ds.task == "ranking":  # each active user's top k (defs/ranking.py)
                from mlops_assets.defs import ranking

                return ranking.serve_day(context, ds, store, registry, day)
            champion = registry.champion_info(ds.model_name)
            if champion is None:
                raise dg.Failure(f"no champion for {ds.model_name}: materialize baseline_model first")
            feats = store.features_for_day(day)
            model = registry.load_champion(champion)
            from mlops_assets.ml.models import predict_scores  # scikit-learn: paid by the scoring step, not at load

            scores = predict_scores(model, feats[ds.feature_names]) if len(feats) else np.array([])
            preds = pd.DataFrame(
                {
                    "entity_id": feats["entity_id"],
                    "event_time": feats["event_time"],
                    "event_day": feats["event_day"],
                    "model_version": champion.version,
                    "score": scores,
                }
            )
            store.write_predictions(day, preds)
            context.log.info(f"{day}: {len(preds)} predictions by v{champion.version}")
            return dg.MaterializeResult(
                metadata={
                    "dagster/row_count": len(preds),
                    "model_version": champion.version,
                    "model_is_baseline": champion.is_baseline,
                    "mean_score": float(preds["score"].mean()) if len(preds) else float("nan"),
                }
            )

    return dg.Definitions(assets=[batch_predictions])
