"""The shipped Chicago ridership spec (a regression on one daily series, lags and rolling means computed point
in time in DuckDB) through the real loop: a regression model is trained, registered and judged by the gate,
and the summary reports RMSE. The replay runs as the CLI runs it, with the comparison's daily refits made on the
idle core, and the comparison built from them must equal the one that refits every morning itself."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

import pytest
import yaml

from mlops_assets.cli import main
from mlops_assets.config import SPECS_DIR, Settings, load_spec
from mlops_assets.defs.resources import ModelRegistryResource
from mlops_assets.replay import ReplayResult, replay
from mlops_assets.storage.stores import store_for
from mlops_assets.strategies import ShadowFit, compare_strategies
from mlops_assets.summary import render_summary

pytestmark = pytest.mark.e2e
CHICAGO = SPECS_DIR / "chicago_ridership.yaml"


def test_chicago_spec_is_valid_against_its_data() -> None:
    assert main(["validate", str(CHICAGO)]) == 0


def fast_chicago_spec(tmp_path: Path) -> Path:
    """The real spec with a small fast search and an early first model, so a 40-day replay takes about a minute."""
    raw = yaml.safe_load(CHICAGO.read_text())
    raw["policy"].update(
        {"decision": "rules", "bootstrap_min_rows": 28, "cooldown_days": 5, "min_new_labelled_rows": 5}
    )
    raw["training"].update({"holdout_days": 7, "validation_days": 7})
    raw["monitoring"].update({"decay_window_days": 7, "decay_min_rows": 5, "window_days": 7})
    raw["search"].update({"trials": 3, "seconds": 20, "windows": [None], "recency_half_lives": [None]})
    raw["search"]["families"] = {
        "baseline": {},
        "ridge": {"alpha": [1.0]},
        "hist_gradient_boosting": {"max_iter": [50], "learning_rate": [0.1], "min_samples_leaf": [3]},
    }
    spec_path = tmp_path / "chicago_fast.yaml"
    spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return spec_path


def test_chicago_replay_trains_a_regression_model(data_dir: Path, tmp_path: Path) -> None:
    spec_path = fast_chicago_spec(tmp_path)
    spec = load_spec(spec_path)
    settings = Settings.from_env().with_spec(spec_path)
    start = spec.replay.start
    # as `mlops-assets replay` runs it: the comparison's daily refits made on the idle core as the days go
    result = replay(spec_path, settings, start=start, end=start + dt.timedelta(days=39), shadow_refits=True)
    out = render_summary(result)
    assert "== chicago_ridership: 40 days replayed" in out
    assert "served rmse" in out and "(rmse, same rows, by month)" in out
    check_shadow_refits(result)
    registry = ModelRegistryResource(
        tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
    )
    champ = registry.champion_info(spec.model_name)
    assert champ is not None and not champ.is_baseline, out
    # lower is better: the gate promoted the model because its hold-out RMSE is below the baseline's
    reason = champ.tags.get("mlops.gate_reason", out)
    got = re.search(r"first trained model beats the baseline: rmse ([0-9.]+) vs ([0-9.]+)", reason)
    assert got and float(got.group(1)) < float(got.group(2)), reason
    assert champ.holdout_metric is not None and champ.holdout_metric == pytest.approx(float(got.group(1)), abs=1e-3)
    # the window features are point in time: a day's lag-1 is the previous day's entries, never its own
    store = store_for(settings, spec)
    with store.connect(read_only=True) as con:
        rows = con.execute(
            "SELECT f.event_day, f.entries_lag_1, l.target FROM features f JOIN labels l USING (entity_id) "
            "ORDER BY f.event_day"
        ).df()
    assert rows["entries_lag_1"].iloc[1:].tolist() == rows["target"].iloc[:-1].tolist()
    assert rows["entries_lag_1"].iloc[0] != rows["entries_lag_1"].iloc[0]  # NaN: no day before the first


def check_shadow_refits(result: ReplayResult) -> None:
    """The comparison built from the refits the replay's worker made is the one it builds by refitting every
    morning itself; a saved refit whose rows no longer match its morning is refit."""
    assert len(result.shadow) >= 5, "the first model came too late for the check to mean anything"
    assert all(isinstance(f, ShadowFit) and Path(f.path).exists() for f in result.shadow.values())
    with_shadow = compare_strategies(result)
    got = re.search(r"(\d+) of the (\d+) daily refits were made during the replay", with_shadow.note)
    assert got and got.group(1) == got.group(2), with_shadow.note  # every morning's refit came from the replay
    morning = min(result.shadow)
    tampered = {**result.shadow, morning: dataclasses.replace(result.shadow[morning], fingerprint="changed")}
    partly = compare_strategies(dataclasses.replace(result, shadow=tampered))
    alone = compare_strategies(dataclasses.replace(result, shadow={}))
    assert "0 of the" in alone.note
    same = [c for c in alone.totals.columns if c not in ("training CPU s", "total cost")]
    for cmp in (with_shadow, partly):
        assert cmp.totals[same].equals(alone.totals[same]), (cmp.totals, alone.totals)
        assert cmp.monthly.equals(alone.monthly)
