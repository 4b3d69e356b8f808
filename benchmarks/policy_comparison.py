"""The cost-aware policy against the schedules a user would otherwise pick, and against hindsight.

Replays each dataset through the real loop (`replay`, the same as `mlops-assets replay`), then runs the
comparison: continuous (what was served) against never retrained, a weekly refit, a daily refit and the
hindsight oracle (the cheapest schedule of weekly refits under the spec's prices). It prints the issue's goals
as ratios side by side:

- continuous metric against the daily refit's (RMSE <= 1.02x; ROC AUC >= daily - 0.005) and against never
  and weekly;
- training CPU against the daily refit's (<= 1.0x; flights <= 0.25x);
- total cost against the oracle's (<= 1.15x);
- the comparison's own cost: a first (cold) run against a second on the same replay, whose refits come from
  the cache, with the same table (nothing may change but the time).

    .venv/bin/python benchmarks/policy_comparison.py                          # flights and Chicago, 120 days
    .venv/bin/python benchmarks/policy_comparison.py --days 0                 # each spec's whole replay range
    .venv/bin/python benchmarks/policy_comparison.py --spec my.yaml --days 200

The replays write into a temporary folder (or --data-dir), never ./data.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from mlops_assets.config import SPECS_DIR, Settings, load_spec


def run(spec_path: Path, data_dir: Path, days: int) -> None:
    os.environ["MLOPS_DATA_DIR"] = str(data_dir)
    os.environ["DAGSTER_HOME"] = str(data_dir / "dagster_home")
    from mlops_assets.replay import replay
    from mlops_assets.strategies import compare_strategies

    spec = load_spec(spec_path)
    settings = Settings.from_env().with_spec(spec_path)
    end = spec.replay.end if not days else min(spec.replay.end, spec.replay.start + dt.timedelta(days=days - 1))
    t = time.perf_counter()
    result = replay(spec_path, settings, end=end)
    replay_s = time.perf_counter() - t
    shutil.rmtree(data_dir / "cache", ignore_errors=True)
    t = time.perf_counter()
    cold = compare_strategies(result)
    cold_s = time.perf_counter() - t
    t = time.perf_counter()
    warm = compare_strategies(result)
    warm_s = time.perf_counter() - t
    print(f"\n== {spec.name}: {len(result.days)} days ({spec.replay.start} .. {end}), replay {replay_s:.0f} s ==")
    print(cold.render())
    from mlops_assets.summary import retrain_table

    retrains = retrain_table(result)
    if not retrains.empty:
        print("\nRetrains (day, kind, gate decision, why)\n" + retrains.to_string(index=False, max_colwidth=110))
    if cold.totals.empty:
        return
    tot = cold.totals
    m = spec.metric
    c, d = tot.loc["continuous"], tot.loc["daily"]
    higher = m in ("roc_auc", "accuracy", "r2")
    if higher:
        metric_goal = f"continuous {c[m]:.4f} vs daily {d[m]:.4f}: gap {d[m] - c[m]:+.4f} (goal <= 0.005)"
    else:
        metric_goal = f"continuous {c[m]:.4f} vs daily {d[m]:.4f}: {c[m] / d[m]:.3f}x (goal <= 1.02x)"
    better = (lambda a, b: a >= b) if higher else (lambda a, b: a <= b)
    cpu_goal = 0.25 if spec.name == "flights" else 1.0
    oracle_cost = tot.loc["oracle", "total cost"]
    print(
        "\nGoals\n"
        f"  metric: {metric_goal}\n"
        f"  at least as good as never ({tot.loc['never', m]:.4f}): {better(c[m], tot.loc['never', m])}; "
        f"as weekly ({tot.loc['weekly', m]:.4f}): {better(c[m], tot.loc['weekly', m])}\n"
        f"  training CPU: {c['training CPU s']:.1f} vs daily {d['training CPU s']:.1f} s: "
        f"{c['training CPU s'] / max(d['training CPU s'], 1e-9):.3f}x (goal <= {cpu_goal}x)\n"
        f"  total cost: {c['total cost']:.1f} vs oracle {oracle_cost:.1f}: "
        f"{c['total cost'] / oracle_cost if oracle_cost > 0 else float('nan'):.3f}x (goal <= 1.15x)\n"
        f"  comparison: cold {cold_s:.1f} s, second run from the cache {warm_s:.1f} s ({warm_s / cold_s:.2f}x); "
        f"same table: {cold.totals.equals(warm.totals) and cold.monthly.equals(warm.monthly)}"
    )


# What `init` writes beside a cost policy: one retrain a data day at most, no cool-down. A spec's rules-mode
# cool-down and weekly ceiling (flights: 28 days, one a week) would overrule the prices being measured.
COST_GUARDS = {"cooldown_days": 0, "max_per_day": 1, "max_per_week": 7}
MAX_NEW_ROWS = 1000  # the rules' "enough new labels" is weeks of rows on flights; a day's is the cost guard


def with_decision(spec_path: Path, decision: str, folder: Path) -> Path:
    """A copy of the spec whose policy decides by `decision` (the shipped specs keep `rules`), with the
    guards `init` writes for a cost policy when it is the cost policy."""
    raw = yaml.safe_load(spec_path.read_text())
    if decision == "cost" and raw["policy"].get("decision", "rules") != "cost":
        raw["policy"].update(COST_GUARDS)
        raw["policy"]["min_new_labelled_rows"] = min(raw["policy"].get("min_new_labelled_rows", 0), MAX_NEW_ROWS)
    raw["policy"]["decision"] = decision
    out = folder / spec_path.name
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", action="append", help="spec file(s); default: the shipped flights and Chicago")
    ap.add_argument("--days", type=int, default=120, help="days replayed from each spec's start (0: all)")
    ap.add_argument("--data-dir", help="where the replays write (default: a temporary folder, removed after)")
    ap.add_argument(
        "--decision",
        choices=["spec", "rules", "cost"],
        default="cost",
        help="the policy replayed: the cost-aware one (default), the rules, or whatever each spec says",
    )
    args = ap.parse_args()
    specs = (
        [Path(s) for s in args.spec]
        if args.spec
        else [SPECS_DIR / "flights.yaml", SPECS_DIR / "chicago_ridership.yaml"]
    )
    for spec in specs:
        if args.decision != "spec":
            spec = with_decision(spec, args.decision, Path(tempfile.mkdtemp(prefix="policy_spec_")))
        if args.data_dir:
            run(spec.resolve(), Path(args.data_dir).resolve() / spec.stem, args.days)
        else:
            with tempfile.TemporaryDirectory(prefix="policy_comparison_") as tmp:
                run(spec.resolve(), Path(tmp), args.days)


if __name__ == "__main__":
    main()
