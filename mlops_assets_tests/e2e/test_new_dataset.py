"""A dataset the project has never seen goes through the whole loop with `init` then `replay`, nothing else:
no code, no hand-edited spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_assets.cli import main
from mlops_assets.config import Settings, load_spec
from mlops_assets.defs.resources import ModelRegistryResource

pytestmark = pytest.mark.e2e


def _orders(path: Path, days: int = 14, per_day: int = 220) -> None:
    """Orders of a made-up shop: whether an order is returned depends on its price, discount and channel."""
    rng = np.random.default_rng(7)
    n = days * per_day
    ts = pd.Timestamp("2025-02-03") + pd.to_timedelta(np.repeat(np.arange(days), per_day), unit="D")
    ts = ts + pd.to_timedelta(rng.integers(0, 24 * 3600, n), unit="s")
    price = rng.uniform(5, 200, n).round(2)
    discount = rng.integers(0, 4, n) * 10
    channel = rng.choice(["web", "app", "store"], n, p=[0.5, 0.3, 0.2])
    logit = 0.02 * (price - 100) + 0.05 * discount - 1.2 * (channel == "store") + rng.normal(0, 0.7, n)
    pd.DataFrame(
        {
            "order_id": np.arange(100_000, 100_000 + n),
            "ordered_at": ts.strftime("%Y-%m-%d %H:%M:%S"),
            "channel": channel,
            "price": price,
            "discount_pct": discount,
            "returned": (logit > 0.3).astype(int),
        }
    ).to_csv(path, index=False)


def test_init_then_replay_runs_the_whole_loop(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    csv = tmp_path / "orders.csv"
    _orders(csv)
    spec_path = tmp_path / "orders.yaml"
    assert main(["init", str(csv), "--target", "returned", "--time", "ordered_at", "-o", str(spec_path)]) == 0
    assert main(["replay", "--spec", str(spec_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    spec = load_spec(spec_path)
    assert f"== {spec.name}: 14 days replayed" in out
    assert "served roc_auc" in out and "first_model" in out
    assert "Continuous training vs never retrained, a weekly and a daily refit, and the hindsight oracle" in out
    settings = Settings.from_env()
    registry = ModelRegistryResource(
        tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
    )
    champ = registry.champion_info(spec.model_name)
    assert champ is not None and not champ.is_baseline
    assert champ.holdout_metric is not None and champ.holdout_metric > 0.8  # the signal was learnt
