"""A budgeted search over model families, hyper-parameters and training windows.

Successive halving in brackets, with Optuna's TPE proposing the configurations. A bracket's configurations
are first fit on the newest quarter of their training rows (the rung); only the best third of all rung
scores so far go on to a full fit, the rest are pruned, so a poor configuration costs a quarter of a fit.
TPE learns from every finished bracket (pruned trials through their rung score), so later brackets search
where the good ones were. The training window and recency weighting are part of the search because on
drifting data "which history to learn from" matters as much as the model: on the flights data a model fit
on the last two months beat an older one in summer and lost in autumn.

Both cores are used by running trials side by side in threads, one thread per estimator: no process to
start, no data to copy (scikit-learn's tree and boosting kernels release the GIL), and no OpenMP team that
stalls when another process holds a core. Each window's preprocessing is fitted once and its matrices shared
by every trial of the family, since only the estimator differs between them. The winner is then refit on
train + validation with every core.

Nothing depends on timing: proposals, rungs and promotions happen bracket by bracket in trial order, so the
same data and space give the same leaderboard on one core or many. Budgets are a number of distinct
configurations and wall seconds; a wall-time budget that binds first can cut the search at a different
bracket.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from mlops_assets.ml.cost import Stopwatch
from mlops_assets.ml.decay import higher_is_better, score
from mlops_assets.ml.models import FAMILIES, build_model, fit, predict_scores

RUNG_FRACTION = 0.25  # first rung: the newest quarter of the window's rows
MIN_RUNG_ROWS = 2000
ETA = 3  # successive halving: the best third of the rung scores go on to a full fit
BRACKET = 2 * ETA  # configurations proposed together; TPE learns between brackets
ASKS_PER_TRIAL = 5  # TPE re-proposing known configurations of a small discrete space: give up after this many
# the spec's `search` keys; the ranking sweep knows these and its own (ml/ranking/sweep.py)
SEARCH_KEYS = frozenset(
    {"families", "windows", "recency_half_lives", "trials", "seconds", "seed", "n_jobs", "max_rows"}
)


@dataclass(frozen=True)
class SearchSpace:
    families: dict[str, dict[str, Any]]
    windows: tuple[int | None, ...] = (None,)
    recency_half_lives: tuple[float | None, ...] = (None,)
    trials: int = 20
    seconds: float = 300.0
    seed: int = 0
    # Cores the sweep uses (None: all of the host's): trials run this many at a time, one thread each, and
    # the winner's refit gets this many threads. The result does not depend on it, only the time does.
    n_jobs: int | None = None
    max_rows: int | None = None  # training rows per fit at most (a seeded sample of the window)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpace:
        unknown = set(d) - SEARCH_KEYS
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
            n_jobs=int(d["n_jobs"]) if d.get("n_jobs") else None,
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
    workers: int = 1

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


def _spread(dom: Any, n: int, rng: np.random.Generator) -> list[Any]:
    """n values covering a domain evenly, in random order: each choice of a list equally often, or one value
    from each of n equal strata of a range (on the log scale where the range is logarithmic)."""
    if isinstance(dom, list):
        return [dom[i] for i in rng.permutation(np.arange(n) % len(dom))]
    low, high, log = dom["low"], dom["high"], bool(dom.get("log", False))
    u = (rng.permutation(n) + rng.random(n)) / n
    lo, hi = (math.log(low), math.log(high)) if log else (float(low), float(high))
    values = [math.exp(lo + x * (hi - lo)) if log else lo + x * (hi - lo) for x in u]
    if isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool):
        return [min(max(round(v), low), high) for v in values]
    return values


def initial_design(space: SearchSpace, n: int) -> list[dict[str, Any]]:
    """The first bracket, laid out to cover the space instead of drawn at random (a Latin-hypercube-like
    design over choices and ranges): with a handful of trials, random draws easily miss a whole region,
    e.g. every small tree of a boosting family. Families get slots by the size of their space (one each
    when there is room), and every choice of every hyper-parameter, window and weighting is spread evenly
    over the slots. Seeded: the same space gives the same design."""
    rng = np.random.default_rng(space.seed)
    fams = list(space.families)
    weights = np.array([1 + len(space.families[f]) for f in fams], dtype=float)
    slots = np.zeros(len(fams), dtype=int)
    if n >= len(fams):
        slots += 1
    share = weights / weights.sum() * n - slots
    while slots.sum() < n:
        i = int(np.argmax(share))
        slots[i] += 1
        share[i] -= 1
    configs: list[dict[str, Any]] = []
    for fam, m in zip(fams, slots, strict=True):
        columns = {f"{fam}.{k}": _spread(dom, int(m), rng) for k, dom in space.families[fam].items()}
        configs += [{"family": fam, **{k: v[i] for k, v in columns.items()}} for i in range(int(m))]
    order = rng.permutation(len(configs))
    windows = _spread(list(space.windows), len(configs), rng)
    half_lives = _spread(list(space.recency_half_lives), len(configs), rng)
    return [{**configs[j], "window_days": windows[i], "half_life_days": half_lives[i]} for i, j in enumerate(order)]


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


@dataclass
class _Prepared:
    """One window's rows, preprocessed once for one family: every trial of the family on this window fits its
    estimator on these matrices (the preprocessing has no hyper-parameters of its own)."""

    rows: pd.DataFrame
    X: Any  # the preprocessed training rows (a dense or sparse matrix, or the frame itself for the baseline)
    y: np.ndarray
    X_valid: Any
    rung: np.ndarray | None  # positions of the newest quarter of the rows; None when too few rows for a rung


@dataclass
class _Proposal:
    trial: Any  # optuna.Trial
    result: TrialResult
    half_life: float | None
    direct: bool = False  # fit in full at once (a baseline, or too few rows for a rung)
    rung_score: float | None = None


def _prepare(
    rows: pd.DataFrame,
    valid: pd.DataFrame,
    *,
    family: str,
    target: str,
    time_column: str,
    numeric: Sequence[str],
    categorical: Sequence[str],
    task: str,
    seed: int,
) -> _Prepared:
    features = [*numeric, *categorical]
    pipe = build_model(family, {}, task=task, numeric=numeric, categorical=categorical, seed=seed)
    y = rows[target].to_numpy()
    if len(pipe.steps) > 1:
        pre = pipe[:-1]
        X, X_valid = pre.fit_transform(rows[features], y), pre.transform(valid[features])
    else:
        X, X_valid = rows[features], valid[features]
    n_rung = max(MIN_RUNG_ROWS, int(len(rows) * RUNG_FRACTION))
    order = np.argsort(pd.to_datetime(rows[time_column]).to_numpy(), kind="mergesort")
    return _Prepared(rows, X, y, X_valid, np.sort(order[-n_rung:]) if n_rung < len(rows) else None)


def _take(X: Any, idx: np.ndarray) -> Any:
    return X.iloc[idx] if isinstance(X, pd.DataFrame) else X[idx]


def _fit_and_score(
    prep: _Prepared,
    estimator: Any,
    weights: np.ndarray | None,
    rung: bool,
    metric: str,
    valid_y: np.ndarray,
) -> tuple[float, int, Stopwatch]:
    """One fit in a worker thread, its OpenMP pinned to that thread; CPU is the thread's own."""
    with Stopwatch(thread=True) as sw, threadpool_limits(limits=1, user_api="openmp"):
        if rung and prep.rung is not None:
            X, y = _take(prep.X, prep.rung), prep.y[prep.rung]
            w = None if weights is None else weights[prep.rung]
        else:
            X, y, w = prep.X, prep.y, weights
        if w is None:
            estimator.fit(X, y)
        else:
            estimator.fit(X, y, sample_weight=w)
        value = score(metric, valid_y, predict_scores(estimator, prep.X_valid))
    return float(value), len(y), sw


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
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if train.empty or valid.empty:
        raise ValueError(f"run_sweep needs rows to train and validate on (train {len(train)}, valid {len(valid)})")
    maximize = higher_is_better(metric)
    workers = max(1, space.n_jobs or os.cpu_count() or 1)
    y_valid = valid[target].to_numpy()
    study = optuna.create_study(
        direction="maximize" if maximize else "minimize",
        sampler=optuna.samplers.TPESampler(
            seed=space.seed, n_startup_trials=min(BRACKET, space.trials), constant_liar=True
        ),
    )
    for params in initial_design(space, min(BRACKET, space.trials)):
        study.enqueue_trial(params, skip_if_exists=True)
    kw: dict[str, Any] = dict(
        target=target, time_column=time_column, numeric=numeric, categorical=categorical, task=task, seed=space.seed
    )
    windows: dict[int | None, pd.DataFrame] = {}
    prepared: dict[tuple[str, int | None], _Prepared | Exception] = {}
    seen: dict[tuple[Any, ...], _Proposal] = {}
    results: list[TrialResult] = []
    rung_scores: list[float] = []
    repeats: list[tuple[Any, _Proposal]] = []  # TPE's re-proposals, each answered by the earlier result
    asks = n_repeats = 0
    notes: list[str] = []
    started = time.perf_counter()
    total = Stopwatch().__enter__()

    def ranked_in_top(value: float) -> bool:
        """A rung score among the best third of every rung score so far (ties go on)."""
        keep = math.ceil(len(rung_scores) / ETA)
        ordered = sorted(rung_scores, reverse=maximize)
        cut = ordered[keep - 1]
        return value >= cut if maximize else value <= cut

    def prep_for(p: _Proposal) -> _Prepared:
        t = p.result
        if t.window_days not in windows:
            windows[t.window_days] = window_rows(train, time_column, t.window_days, space.max_rows, space.seed)
        key = (t.family, t.window_days)
        if key not in prepared:
            rows = windows[t.window_days]
            try:
                if rows.empty:
                    raise ValueError(f"no training rows in the last {t.window_days} days")
                prepared[key] = _prepare(rows, valid, family=t.family, **kw)
            except Exception as exc:  # a family that cannot even preprocess fails each of its trials
                prepared[key] = exc
        got = prepared[key]
        if isinstance(got, Exception):
            raise got
        return got

    def submit(pool: ThreadPoolExecutor, p: _Proposal, rung: bool) -> Any:
        t = p.result
        prep = prep_for(p)
        est = build_model(t.family, t.params, task=task, numeric=numeric, categorical=categorical, seed=space.seed)
        weights = recency_weights(prep.rows, time_column, p.half_life)
        return pool.submit(_fit_and_score, prep, est.steps[-1][1], weights, rung, metric, y_valid)

    def run(pool: ThreadPoolExecutor, batch: list[_Proposal], rung: bool) -> None:
        """Fit a batch side by side; results are read back in trial order, so timing never decides."""
        futures = []
        for p in batch:
            try:
                futures.append(submit(pool, p, rung and not p.direct))
            except Exception as exc:
                futures.append(exc)
        for p, fut in zip(batch, futures, strict=True):
            t = p.result
            try:
                if isinstance(fut, Exception):
                    raise fut
                value, n, sw = fut.result()
            except Exception as exc:
                t.state, t.error = "failed", f"{type(exc).__name__}: {exc}"
                continue
            t.wall_seconds += sw.wall_seconds
            t.cpu_seconds += sw.cpu_seconds
            t.n_train = n
            if rung and not p.direct:
                p.rung_score = value
                p.trial.report(value, step=0)
                if math.isfinite(value):
                    rung_scores.append(value)
            else:
                t.score, t.state = value, "complete"
                p.trial.report(value, step=1)

    def propose() -> _Proposal | None:
        """The next configuration TPE proposes that has not been tried; a repeat is answered from the
        earlier result (TPE learns from it) and does not count against the budget."""
        nonlocal asks, n_repeats
        while asks < ASKS_PER_TRIAL * space.trials:
            asks += 1
            trial: Any = study.ask()  # optuna.Trial; its suggestions are typed loosely
            family = trial.suggest_categorical("family", list(space.families))
            window = trial.suggest_categorical("window_days", list(space.windows))
            half_life = trial.suggest_categorical("half_life_days", list(space.recency_half_lives))
            params = {k: _suggest(trial, f"{family}.{k}", dom) for k, dom in space.families[family].items()}
            key = (family, window, half_life, tuple(sorted((k, repr(v)) for k, v in params.items())))
            prior = seen.get(key)
            if prior is None:
                t = TrialResult(len(results), family, params, window, half_life, None, "pending", 0.0, 0.0, 0)
                results.append(t)
                seen[key] = p = _Proposal(trial, t, half_life)
                return p
            n_repeats += 1
            repeats.append((trial, prior))  # told once the bracket is scored: the prior may be in it
        return None

    def tell(trial: Any, p: _Proposal) -> None:
        t = p.result
        if p.rung_score is not None and trial is not p.trial:
            trial.report(p.rung_score, step=0)
        if t.state == "complete" and t.score is not None and math.isfinite(t.score):
            study.tell(trial, t.score)
        elif t.state == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, state=TrialState.FAIL)

    with threadpool_limits(limits=1), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trial") as pool:
        while len(results) < space.trials:
            if time.perf_counter() - started >= space.seconds:
                notes.append(f"wall-time budget of {space.seconds:g} s reached after {len(results)} trials")
                break
            batch: list[_Proposal] = []
            size = min(BRACKET, space.trials - len(results))
            while len(batch) < size:
                proposal = propose()
                if proposal is None:
                    break
                batch.append(proposal)
            if not batch:
                notes.append(f"the space holds only {len(results)} distinct configurations")
                break
            for p in batch:
                try:
                    p.direct = p.result.family == "baseline" or prep_for(p).rung is None
                except Exception:
                    p.direct = True  # it fails in its fit, with the reason recorded
            run(pool, batch, rung=True)
            promoted = [p for p in batch if p.rung_score is not None and ranked_in_top(p.rung_score)]
            have_model = any(t.state == "complete" for t in results)
            if promoted and time.perf_counter() - started >= space.seconds and have_model:
                notes.append(
                    f"wall-time budget of {space.seconds:g} s reached: {len(promoted)} promoted trials not fit"
                )
                promoted = []
            run(pool, promoted, rung=False)
            for p in batch:
                if p.result.state == "pending":
                    p.result.state = "pruned"
                tell(p.trial, p)
                if on_trial is not None:
                    on_trial(p.result)
            while repeats:
                tell(*repeats.pop(0))
    if n_repeats:
        notes.append(f"TPE proposed {n_repeats} known configurations again; they were answered from the earlier result")
    complete = [t for t in results if t.state == "complete" and t.score is not None and math.isfinite(t.score)]
    if not complete:
        errors = "; ".join(f"trial {t.number} {t.family}: {t.error or t.state}" for t in results)
        raise RuntimeError(f"every trial of the sweep failed or was pruned: {errors}")
    best = min(complete, key=lambda t: (-float(t.score) if maximize else float(t.score), t.number))  # type: ignore[arg-type]
    full = pd.concat([train, valid], ignore_index=True) if refit else train
    with threadpool_limits(limits=workers):
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
    return SweepResult(results, best, model, metric, total.wall_seconds, total.cpu_seconds, n_refit, notes, workers)


def sweep_pointer(
    result: Any, *, model_uri: str, model_sha256: str, run_id: str, metric: str, dataset_sha256: str
) -> dict[str, Any]:
    """What `candidate_models` hands downstream about a sweep's winner, the same for every task (tabular and
    ranking sweeps both): the registry, the gate and the replay's summary read these keys."""
    best = result.best
    return {
        "model_uri": model_uri,
        "model_sha256": model_sha256,
        "run_id": run_id,
        "family": best.family,
        "params": best.params,
        "window_days": best.window_days,
        "half_life_days": best.half_life_days,
        "valid_score": best.score,
        "metric": metric,
        "cpu_seconds": result.cpu_seconds,
        "wall_seconds": result.wall_seconds,
        "trials": len(result.trials),
        "dataset_sha256": dataset_sha256,
    }
