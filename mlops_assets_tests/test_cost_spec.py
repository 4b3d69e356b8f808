"""`validate` refuses a cost or budget that cannot be: negative prices, a zero budget, nothing to weigh, a
first model asked for before a hold-out can exist; each named by its key and, where it has one, its line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlops_assets.cli import main
from mlops_assets.config import DEFAULT_SPEC, SPECS_DIR, load_spec


def _write(tmp_path: Path, **cost: object) -> Path:
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["policy"]["cost"].update(cost)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _line(path: Path, key: str) -> int:
    return next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith(f"{key}:"))


@pytest.mark.parametrize(
    ("cost", "key", "words"),
    [
        ({"staleness_price": -5}, "staleness_price", "greater than or equal to 0"),
        ({"cpu_second_price": -0.1}, "cpu_second_price", "greater than or equal to 0"),
        ({"max_cpu_seconds": 0}, "max_cpu_seconds", "greater than 0"),
        ({"variant": "sometimes"}, "variant", "'cumulative' or 'threshold'"),
    ],
)
def test_validate_refuses_an_impossible_cost_with_key_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cost: dict[str, object], key: str, words: str
) -> None:
    path = _write(tmp_path, **cost)
    assert main(["validate", str(path), "--no-data"]) == 2
    err = capsys.readouterr().err
    assert f"policy.cost.{key}: " in err and words in err
    assert f"(line {_line(path, key)})" in err


def test_nothing_to_weigh_and_a_first_model_before_its_hold_out_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, staleness_price=0, cpu_second_price=0)
    assert main(["validate", str(path), "--no-data"]) == 2
    err = capsys.readouterr().err
    assert "policy.cost" in err and "both 0" in err and f"(line {_line(path, 'cost')})" in err
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["policy"]["bootstrap_min_days"] = 5
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["validate", str(path), "--no-data"]) == 2
    assert "policy.bootstrap_min_days is 5" in capsys.readouterr().err


def test_shipped_specs_keep_their_rules_and_carry_a_cost_policy_with_a_budget() -> None:
    """The shipped specs keep the rules tuned on their year (the cost-aware policy has not matched them over the
    full year yet); their cost section, with a budget, is what `decision: cost` replays."""
    for name in ("flights.yaml", "chicago_ridership.yaml"):
        spec = load_spec(SPECS_DIR / name)
        assert spec.policy.decision == "rules" and spec.policy.cost.max_cpu_seconds is not None
