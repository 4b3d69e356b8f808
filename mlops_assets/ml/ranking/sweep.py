"""The ranking sweep: families, hyper-parameters, training windows and recency half-lives, judged on the
validation days exactly as the gate judges the hold-out (each day's lists from the interactions before it).

Configurations are drawn from the spec's `search` space with a seeded generator, the families in turn so
that every family is tried within the first trials; the budget is a number of trials and wall seconds.
The winner is refit on train + validation. Deterministic for a given data and space.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlops_assets.ml import automl
from mlops_assets.ml.automl import TrialResult
from mlops_assets.ml.cost import Stopwatch
from mlops_assets.ml.ranking.metrics import evaluate_days, metric_column
from mlops_assets.ml.ranking.models import FAMILIES, Recommender

SEARCH_KEYS = automl.SEARCH_KEYS | {"blends", "blend_windows"}
COLLABORATIVE = ("item_knn", "ease", "als")  # the families a blend of recent popularity applies to


@dataclass(frozen=True)
class RankingSpace:
    families: dict[str, dict[str, Any]]
    windows: tuple[int | None, ...] = (None,)
    recency_half_lives: tuple[float | None, ...] = (None,)
    trials: int = 8
    seconds: float = 120.0
    seed: int = 0
    # weights of recent popularity tried on the best collaborative trial, over each window (days); none: no blend
    blends: tuple[float, ...] = ()
    blend_windows: tuple[int, ...] = (30,)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RankingSpace:
        unknown = set(d) - SEARCH_KEYS
        if unknown:
            raise ValueError(f"search: unknown keys {sorted(unknown)}")
        families = dict(d.get("families") or {})
        if not families:
            raise ValueError("search.families: at least one ranking family is needed")
        for fam, params in families.items():
            if fam not in FAMILIES:
                raise ValueError(f"search.families.{fam}: unknown ranking family (known: {', '.join(FAMILIES)})")
            for name, dom in (params or {}).items():
                if isinstance(dom, list) and dom:
                    continue
                if isinstance(dom, dict) and {"low", "high"} <= set(dom) and dom["low"] <= dom["high"]:
                    continue
                raise ValueError(f"search.families.{fam}.{name}: a non-empty list or {{low, high, log}}, got {dom!r}")
        blends = tuple(float(b) for b in d.get("blends") or [])
        windows = tuple(int(w) for w in d.get("blend_windows") or [30])
        if any(b <= 0 for b in blends) or any(w < 1 for w in windows):
            raise ValueError(f"search.blends must be > 0 and search.blend_windows >= 1 day, got {blends}, {windows}")
        return cls(
            families={k: dict(v or {}) for k, v in families.items()},
            windows=tuple(d.get("windows") or [None]),
            recency_half_lives=tuple(d.get("recency_half_lives") or [None]),
            trials=int(d.get("trials", 8)),
            seconds=float(d.get("seconds", 120.0)),
            seed=int(d.get("seed", 0)),
            blends=blends,
            blend_windows=windows,
        )


def _draw(dom: Any, rng: np.random.Generator) -> Any:
    if isinstance(dom, list):
        v = dom[int(rng.integers(len(dom)))]
        return v.item() if hasattr(v, "item") else v
    lo, hi = dom["low"], dom["high"]
    if isinstance(lo, int) and isinstance(hi, int) and not dom.get("log"):
        return int(rng.integers(lo, hi + 1))
    x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if dom.get("log") else rng.uniform(lo, hi)
    return round(float(x), 6)


def proposals(space: RankingSpace) -> list[tuple[str, dict[str, Any], int | None, float | None]]:
    """The configurations the sweep tries, in order. A family without hyper-parameters (popularity: a count
    per item, milliseconds to fit) is tried first at every window and half-life, on top of `search.trials`:
    drawn at random like the others it may never meet its best window (on MovieLens, sweeps of 8 drew
    popularity of the last 30 days in only some months, and it is the best fixed recommender there). The
    `trials` then go to the other families in turn, each with drawn parameters, window and half-life; a repeat
    of an earlier configuration is drawn again (a few times at most)."""
    rng = np.random.default_rng(space.seed)
    exhaustive = [f for f, params in space.families.items() if not params]
    out: list[tuple[str, dict[str, Any], int | None, float | None]] = [
        (fam, {}, int(w) if w else None, float(h) if h else None)
        for fam in exhaustive
        for w in space.windows
        for h in space.recency_half_lives
    ]
    fams = [f for f in space.families if f not in exhaustive]
    if not fams:
        return out
    seen: set[str] = set()
    attempts, drawn = 0, 0
    while drawn < space.trials and attempts < space.trials * 10:
        fam = fams[drawn % len(fams)]
        params = {k: _draw(v, rng) for k, v in space.families[fam].items()}
        w = space.windows[int(rng.integers(len(space.windows)))]
        h = space.recency_half_lives[int(rng.integers(len(space.recency_half_lives)))]
        key = repr((fam, sorted(params.items()), w, h))
        attempts += 1
        if key in seen:
            continue
        seen.add(key)
        out.append((fam, params, int(w) if w else None, float(h) if h else None))
        drawn += 1
    return out


@dataclass
class RankingSweepResult:
    trials: list[TrialResult]
    best: TrialResult
    best_model: Recommender
    metric: str
    wall_seconds: float
    cpu_seconds: float
    refit_rows: int = 0
    workers: int = 1
    notes: list[str] = field(default_factory=list)

    def leaderboard(self) -> pd.DataFrame:
        board = pd.DataFrame(
            [
                {
                    "trial": t.number,
                    "family": t.family,
                    "window_days": t.window_days,
                    "half_life_days": t.half_life_days,
                    self.metric: t.score,
                    "state": t.state,
                    "wall_s": round(t.wall_seconds, 2),
                    "cpu_s": round(t.cpu_seconds, 2),
                    "n_train": t.n_train,
                    "params": ", ".join(f"{k}={v}" for k, v in t.params.items()),
                }
                for t in self.trials
            ]
        )
        if board.empty:
            return board
        return board.sort_values([self.metric, "trial"], ascending=[False, True], na_position="last").reset_index(
            drop=True
        )


def mean_metric(rows: pd.DataFrame, metric: str) -> float:
    """The mean over users of each user's mean: every judged user weighs the same, however active."""
    if rows.empty:
        return float("nan")
    return float(rows.groupby("user")[metric_column(metric)].mean().mean())


def run_ranking_sweep(
    interactions: pd.DataFrame,
    *,
    valid_days: list[Any],
    holdout_start: Any,
    k: int,
    metric: str,
    space: RankingSpace,
    on_trial: Callable[[TrialResult], None] | None = None,
) -> RankingSweepResult:
    """Fit each configuration on the interactions before the first validation day, score it on the
    validation days, refit the best on everything before the hold-out."""
    valid_start = pd.Timestamp(min(valid_days))
    t0 = time.perf_counter()
    trials: list[TrialResult] = []
    best_cf: tuple[float, Recommender] | None = None  # the best collaborative trial, for the blends

    def trial(number: int, make: Callable[[], Recommender], fam: str, params: dict[str, Any], w: Any, h: Any) -> None:
        nonlocal best_cf
        with Stopwatch() as sw:
            model: Recommender | None
            try:
                model = make()
                rows, _ = evaluate_days(model, interactions, valid_days, k)
                value, state, err = mean_metric(rows, metric), "complete", None
                if not np.isfinite(value):
                    state, err = "failed", "no judged user on the validation days"
            except (ValueError, np.linalg.LinAlgError, MemoryError) as exc:
                value, state, err, model = float("nan"), "failed", f"{exc}\n{traceback.format_exc()}", None
        t = TrialResult(
            number,
            fam,
            params,
            w,
            h,
            value if np.isfinite(value) else None,
            state,
            sw.wall_seconds,
            sw.cpu_seconds,
            model.n_train if model is not None else 0,
            err,
        )
        trials.append(t)
        collaborative = fam in COLLABORATIVE and "blend" not in params
        if model is not None and state == "complete" and collaborative and (best_cf is None or value > best_cf[0]):
            best_cf = (value, model)
        if on_trial:
            on_trial(t)

    with Stopwatch() as total:
        for number, (fam, params, w, h) in enumerate(proposals(space)):
            if time.perf_counter() - t0 > space.seconds and trials:
                break

            def fitted(fam: str = fam, params: dict[str, Any] = params, w: Any = w, h: Any = h) -> Recommender:
                return Recommender(fam, params, window_days=w, half_life_days=h, seed=space.seed).fit(
                    interactions, valid_start
                )

            trial(number, fitted, fam, params, w, h)
        # Recent popularity blended into the best collaborative trial: the same fit scored again, so each blend
        # costs an evaluation, not a fit (on MovieLens a blend beat both its parts: benchmarks/ranking_families.py).
        base = best_cf[1] if best_cf is not None else None
        for weight in space.blends if base is not None else ():
            for days in space.blend_windows:
                assert base is not None

                def blended(b: Recommender = base, x: float = weight, d: int = days) -> Recommender:
                    return b.blended(interactions, x, d)

                params = {**base.params, "blend": weight, "blend_window": days}
                trial(len(trials), blended, base.family, params, base.window_days, base.half_life_days)
        done = [t for t in trials if t.state == "complete" and t.score is not None]
        if not done:
            raise RuntimeError(f"every ranking trial failed: {[t.error for t in trials][:2]}")
        best = max(done, key=lambda t: (t.score or 0.0, -t.number))
        best_model = Recommender(
            best.family,
            best.params,
            window_days=best.window_days,
            half_life_days=best.half_life_days,
            seed=space.seed,
        ).fit(interactions, pd.Timestamp(holdout_start))
    return RankingSweepResult(
        trials, best, best_model, metric, time.perf_counter() - t0, total.cpu_seconds, best_model.n_train
    )
