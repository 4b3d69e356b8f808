"""The comparison's daily refits made on the idle core while the replay runs: the comparison built from them
is the one it builds by refitting every morning itself, and a morning whose rows changed is refit."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

import pytest

from mlops_assets.config import Settings, load_spec
from mlops_assets.replay import replay
from mlops_assets.strategies import ShadowFit, compare_strategies
from mlops_assets_tests.e2e.test_chicago import fast_chicago_spec

pytestmark = pytest.mark.e2e


def test_shadow_refits_give_the_comparison_it_computes_itself(data_dir: Path, tmp_path: Path) -> None:
    spec_path = fast_chicago_spec(tmp_path)
    spec = load_spec(spec_path)
    settings = Settings.from_env().with_spec(spec_path)
    start = spec.replay.start
    result = replay(spec_path, settings, start=start, end=start + dt.timedelta(days=39), shadow_refits=True)
    assert len(result.shadow) >= 5, "the first model came too late for the test to mean anything"
    assert all(isinstance(f, ShadowFit) and Path(f.path).exists() for f in result.shadow.values())

    with_shadow = compare_strategies(result)
    got = re.search(r"(\d+) of the (\d+) daily refits were made during the replay", with_shadow.note)
    assert got and got.group(1) == got.group(2), with_shadow.note  # every morning's refit came from the replay
    # one saved refit no longer matches its morning's rows: the comparison must refit that morning itself
    morning = min(result.shadow)
    tampered = {**result.shadow, morning: dataclasses.replace(result.shadow[morning], fingerprint="changed")}
    partly = compare_strategies(dataclasses.replace(result, shadow=tampered))
    alone = compare_strategies(dataclasses.replace(result, shadow={}))
    same = [c for c in alone.totals.columns if c not in ("training CPU s", "total cost")]
    assert "0 of the" in alone.note
    for cmp in (with_shadow, partly):
        assert cmp.totals[same].equals(alone.totals[same]), (cmp.totals, alone.totals)
        assert cmp.monthly.equals(alone.monthly)
    cpu = alone.totals.loc["daily", "training CPU s"]
    assert with_shadow.totals.loc["daily", "training CPU s"] == pytest.approx(cpu, rel=0.5)
