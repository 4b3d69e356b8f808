"""A budgeted search over model families, hyper-parameters and training windows.

Optuna's TPE proposes configurations; each trial first fits on the newest quarter of its training rows and
reports that score, and the median pruner stops trials already worse than the median of earlier trials at
the same rung, so poor configurations cost a quarter of a fit. The training window and recency weighting are
part of the search because on drifting data "which history to learn from" matters as much as the model: on
the flights data a model fit on the last two months beat an older one in summer and lost in autumn.

Budgets are a number of trials and wall seconds; trials run one after another and each estimator uses both
cores. With the trial budget binding, the same data and space give the same leaderboard (seeded sampler,
seeded estimators); a wall-time budget that binds first can cut the list at a different trial.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from mlops_assets.ml.cost import Stopwatch
from mlops_assets.ml.decay import higher_is_better, score
from mlops_assets.ml.models import FAMILIES, build_model, fit, predict_scores

RUNG_FRACTION = 0.25  # first rung: the newest quarter of the window's rows
MIN_RUNG_ROWS = 2000


@dataclass(frozen=True)
class SearchSpace:
    families: dict[str, dict[str, Any]]
    windows: tuple[int | None, ...] = (None,)
    recency_half_lives: tuple[float | None, ...] = (None,)
    trials: int = 20
    seconds: float = 300.0
    seed: int = 0
    # One thread per model by default: on a shared 2-core box, HGB's OpenMP threads stall whenever another
    # process holds a core (trials of a second turned into minutes); one thread degrades gracefully.
    n_jobs: int = 1
    max_rows: int | None = None  # training rows per fit at most (a seeded sample of the window)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpace:
        unknown = set(d) - {
            "families",
            "windows",
            "recency_half_lives",
            "trials",
            "seconds",
            "seed",
            "n_jobs",
            "max_rows",
        }
        if unknown:
            raise ValueError(f"search: unknown keys {sorted(unknown)}")
        families = dict(d.get("families") or {})
        if not families:
            raise ValueError("search.families: at least one model family is needed")
        for fam, params in families.items():
            if fam not in FAMILIES:
                raise ValueError(f"search.families.{fam}: unknown family (known: {', '.join(FAMILIES)})")
            for name, dom in (params or {}).items():
                _check_domain(f"search.families.{fam}.{name}", dom)
        return cls(
            families={k: dict(v or {}) for k, v in families.items()},
            windows=tuple(d.get("windows") or [None]),
            recency_half_lives=tuple(d.get("recency_half_lives") or [None]),
            trials=int(d.get("trials", 20)),
            seconds=float(d.get("seconds", 300.0)),
            seed=int(d.get("seed", 0)),
            n_jobs=int(d.get("n_jobs", 1)),
            max_rows=int(d["max_rows"]) if d.get("max_rows") else None,
        )


def _check_domain(where: str, dom: Any) -> None:
    if isinstance(dom, list):
        if not dom:
            raise ValueError(f"{where}: an empty list of choices")
        return
    if isinstance(dom, dict):
        if set(dom) - {"low", "high", "log"} or "low" not in dom or "high" not in dom:
            raise ValueError(f"{where}: a range is {{low, high, log}}, got {dom}")
        if dom["low"] > dom["high"] or (dom.get("log") and dom["low"] <= 0):
            raise ValueError(f"{where}: impossible range {dom}")
        return
    raise ValueError(f"{where}: expected a list of choices or {{low, high, log}}, got {dom!r}")


@dataclass
class TrialResult:
    number: int
    family: str
    params: dict[str, Any]
    window_days: int | None
    half_life_days: float | None
    score: float | None
    state: str  # "complete" | "pruned" | "failed"
    wall_seconds: float
    cpu_seconds: float
    n_train: int
    error: str | None = None
    repeat_of: int | None = None  # TPE proposed an already-tried configuration: its result is reused, not refit


@dataclass
class SweepResult:
    trials: list[TrialResult]
    best: TrialResult
    best_model: Pipeline
    metric: str
    wall_seconds: float
    cpu_seconds: float
    refit_rows: int = 0
    notes: list[str] = field(default_factory=list)

    def leaderboard(self) -> pd.DataFrame:
        rows = [
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
                "repeat_of": t.repeat_of,
                "params": ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items()),
            }
            for t in self.trials
        ]
        board = pd.DataFrame(rows)
        if board.empty:
            return board
        rank = board["state"].map({"complete": 0, "pruned": 1, "failed": 2})
        key = board[self.metric].fillna(-np.inf if higher_is_better(self.metric) else np.inf)
        board = board.assign(_r=rank, _k=key if not higher_is_better(self.metric) else -key)
        return board.sort_values(["_r", "_k", "trial"]).drop(columns=["_r", "_k"]).reset_index(drop=True)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _suggest(trial: Any, name: str, dom: Any) -> Any:
    if isinstance(dom, list):
        return trial.suggest_categorical(name, dom)
    low, high, log = dom["low"], dom["high"], bool(dom.get("log", False))
    if isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool):
        return trial.suggest_int(name, low, high, log=log)
    return trial.suggest_float(name, float(low), float(high), log=log)


def window_rows(
    frame: pd.DataFrame, time_column: str, window_days: int | None, max_rows: int | None = None, seed: int = 0
) -> pd.DataFrame:
    """The newest `window_days` of rows; above `max_rows`, a seeded uniform sample of them (in time order), so
    that the cost of a retrain stops growing with the history while every period stays represented."""
    rows = frame
    if window_days is not None and not frame.empty:
        t = pd.to_datetime(frame[time_column])
        rows = frame[t > t.max() - pd.Timedelta(days=window_days)]
    if max_rows is not None and len(rows) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=max_rows, replace=False))
        rows = rows.iloc[keep]
    return rows


def recency_weights(frame: pd.DataFrame, time_column: str, half_life_days: float | None) -> np.ndarray | None:
    if half_life_days is None:
        return None
    t = pd.to_datetime(frame[time_column])
    age = ((t.max() - t).dt.total_seconds() / 86400.0).to_numpy()
    return np.power(0.5, age / float(half_life_days))


def fit_recipe(
    frame: pd.DataFrame,
    *,
    family: str,
    params: Mapping[str, Any],
    window_days: int | None,
    half_life_days: float | None,
    target: str,
    time_column: str,
    numeric: Sequence[str],
    categorical: Sequence[str],
    task: str,
    seed: int,
    max_rows: int | None = None,
) -> tuple[Pipeline, int]:
    """Fit one configuration on its window of `frame`: used by the sweep's refit and by anyone who wants to
    retrain a registered model's recipe on other data."""
    rows = window_rows(frame, time_column, window_days, max_rows, seed)
    if rows.empty:
        raise ValueError(f"no training rows in the last {window_days} days")
    model = build_model(family, params, task=task, numeric=numeric, categorical=categorical, seed=seed)
    features = [*numeric, *categorical]
    fit(model, rows[features], rows[target].to_numpy(), recency_weights(rows, time_column, half_life_days))
    return model, len(rows)


def run_sweep(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    *,
    target: str,
    time_column: str,
    numeric: Sequence[str],
    categorical: Sequence[str],
    task: str,
    metric: str,
    space: SearchSpace,
    on_trial: Callable[[TrialResult], None] | None = None,
    refit: bool = True,
) -> SweepResult:
    """Search on `train`, score on `valid`; the winner is refit on train + valid (its window measured from
    the newest row) so that the shipped model has seen the most recent week too."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if train.empty or valid.empty:
        raise ValueError(f"run_sweep needs rows to train and validate on (train {len(train)}, valid {len(valid)})")
    features = [*numeric, *categorical]
    direction: Literal["maximize", "minimize"] = "maximize" if higher_is_better(metric) else "minimize"
    y_valid = valid[target].to_numpy()
    X_valid = valid[features]
    results: list[TrialResult] = []
    best_model: dict[str, Any] = {}
    # On a discrete space TPE often proposes a configuration again; refitting it would spend budget for the
    # same number (every fit is seeded). The repeat is still a trial, so a tiny space cannot loop forever.
    seen: dict[tuple[Any, ...], TrialResult] = {}
    started = time.perf_counter()
    total = Stopwatch().__enter__()

    def objective(trial: Any) -> float:
        family = trial.suggest_categorical("family", list(space.families))
        window = trial.suggest_categorical("window_days", list(space.windows))
        half_life = trial.suggest_categorical("half_life_days", list(space.recency_half_lives))
        params = {k: _suggest(trial, f"{family}.{k}", dom) for k, dom in space.families[family].items()}
        key = (family, window, half_life, tuple(sorted((k, repr(v)) for k, v in params.items())))
        if key in seen:
            prior = seen[key]
            again = TrialResult(
                trial.number,
                family,
                params,
                window,
                half_life,
                prior.score,
                prior.state,
                0.0,
                0.0,
                prior.n_train,
                prior.error,
                repeat_of=prior.number,
            )
            results.append(again)
            if on_trial is not None:
                on_trial(again)
            if prior.state == "pruned":
                raise optuna.TrialPruned()
            if prior.state == "failed":
                raise RuntimeError(f"repeat of failed trial {prior.number}: {prior.error}")
            return float(prior.score)  # type: ignore[arg-type]
        rows = window_rows(train, time_column, window, space.max_rows, space.seed)
        result = TrialResult(trial.number, family, params, window, half_life, None, "failed", 0.0, 0.0, len(rows))
        seen[key] = result
        sw = Stopwatch().__enter__()
        try:
            if rows.empty:
                raise ValueError(f"no training rows in the last {window} days")
            weights = recency_weights(rows, time_column, half_life)
            n_rung = max(MIN_RUNG_ROWS, int(len(rows) * RUNG_FRACTION))
            if family != "baseline" and n_rung < len(rows):
                order = np.argsort(pd.to_datetime(rows[time_column]).to_numpy(), kind="mergesort")[-n_rung:]
                sub = rows.iloc[order]
                m = build_model(family, params, task=task, numeric=numeric, categorical=categorical, seed=space.seed)
                fit(m, sub[features], sub[target].to_numpy(), None if weights is None else weights[order])
                trial.report(score(metric, y_valid, predict_scores(m, X_valid)), step=0)
                if trial.should_prune():
                    sw.__exit__(None, None, None)
                    result.state, result.wall_seconds, result.cpu_seconds = (
                        "pruned",
                        sw.wall_seconds,
                        sw.cpu_seconds,
                    )
                    result.n_train = n_rung
                    raise optuna.TrialPruned()
            m = build_model(family, params, task=task, numeric=numeric, categorical=categorical, seed=space.seed)
            fit(m, rows[features], rows[target].to_numpy(), weights)
            value = score(metric, y_valid, predict_scores(m, X_valid))
            trial.report(value, step=1)
            sw.__exit__(None, None, None)
            result.score, result.state = float(value), "complete"
            result.wall_seconds, result.cpu_seconds = sw.wall_seconds, sw.cpu_seconds
            better = not best_model or (
                value > best_model["score"] if direction == "maximize" else value < best_model["score"]
            )
            if better and math.isfinite(value):
                best_model.update(score=value, trial=result)
            return float(value)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            sw.__exit__(None, None, None)
            result.error = f"{type(exc).__name__}: {exc}"
            result.wall_seconds, result.cpu_seconds = sw.wall_seconds, sw.cpu_seconds
            raise  # optuna records the trial as failed (catch=Exception) and the search goes on
        finally:
            results.append(result)
            if on_trial is not None:
                on_trial(result)

    study = optuna.create_study(
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=space.seed, n_startup_trials=min(5, space.trials)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    )
    # Trials run one at a time (TPE stays deterministic) and each estimator gets n_jobs threads: HGB's OpenMP
    # pool would otherwise take every core of the host, whatever the budget says.
    with threadpool_limits(limits=space.n_jobs):
        study.optimize(objective, n_trials=space.trials, timeout=space.seconds, catch=(Exception,))
    if not best_model:
        errors = "; ".join(f"trial {t.number} {t.family}: {t.error or t.state}" for t in results)
        raise RuntimeError(f"every trial of the sweep failed or was pruned: {errors}")
    best: TrialResult = best_model["trial"]
    notes = []
    if time.perf_counter() - started >= space.seconds:
        notes.append(f"wall-time budget of {space.seconds:g} s reached after {len(results)} trials")
    full = pd.concat([train, valid], ignore_index=True) if refit else train
    model, n_refit = fit_recipe(
        full,
        family=best.family,
        params=best.params,
        window_days=best.window_days,
        half_life_days=best.half_life_days,
        target=target,
        time_column=time_column,
        numeric=numeric,
        categorical=categorical,
        task=task,
        seed=space.seed,
        max_rows=space.max_rows,
    )
    total.__exit__(None, None, None)
    return SweepResult(results, best, model, metric, total.wall_seconds, total.cpu_seconds, n_refit, notes)
