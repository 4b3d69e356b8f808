"""Continuous training against the two strategies a user would otherwise pick, on the same replay.

- continuous: what the system actually served (the prediction log), champion by champion;
- never: the first trained model, kept for the rest of the year;
- daily: the first sweep's winning recipe (family, hyper-parameters, training window, recency weighting,
  row cap) refit every morning on every label known by then, the blind schedule many teams run.

All three are scored on the same rows (every labelled event after the first trained model existed), with
the same point-in-time features, month by month; cost is training CPU-seconds measured in this process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import shutil
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import joblib
import numpy as np
import pandas as pd
from joblib import Memory, Parallel, delayed
from threadpoolctl import threadpool_limits

from mlops_assets.config import DatasetSpec, Settings
from mlops_assets.ml.automl import SearchSpace, fit_recipe, window_rows
from mlops_assets.ml.cost import Stopwatch
from mlops_assets.ml.decay import higher_is_better
from mlops_assets.ml.evaluate import score
from mlops_assets.ml.models import predict_scores
from mlops_assets.ml.oracle import hindsight_schedule
from mlops_assets.storage.models import load_verified
from mlops_assets.storage.stores import store_for

if TYPE_CHECKING:  # the daily refits run in worker processes that import this module: keep Dagster out of them
    from mlops_assets.defs.resources import ModelRegistryResource
    from mlops_assets.replay import ReplayResult


@dataclass
class StrategyComparison:
    metric: str
    monthly: pd.DataFrame  # month x strategy
    totals: pd.DataFrame  # strategy x (metric, retrains, cpu_seconds)
    note: str

    def render(self) -> str:
        return "\n".join(
            [
                f"Continuous training vs never retrained, a weekly and a daily refit, and the hindsight oracle "
                f"({self.metric}, same rows, by month)",
                self.monthly.round(4).to_string(),
                "",
                self.totals.to_string(),
                self.note,
            ]
        )


def _first_trained_version(registry: ModelRegistryResource, name: str) -> Any | None:
    versions = registry.client.search_model_versions(f"name='{name}'")
    trained = [v for v in versions if v.tags.get("mlops.is_baseline") == "false"]
    return min(trained, key=lambda v: int(v.version)) if trained else None


def _tag_number(tags: dict[str, str], key: str) -> float | None:
    value = tags.get(key)
    return None if value in (None, "", "None", "nan") else float(value)


def _timed_fit(rows: pd.DataFrame, recipe: dict[str, Any]) -> tuple[Any, float]:
    """One refit on one core, with the CPU-seconds it took: how every daily refit is made and billed."""
    with Stopwatch() as sw, threadpool_limits(limits=1):
        model, _ = fit_recipe(rows, **recipe)
    return model, sw.cpu_seconds


def _refit_and_score(rows: pd.DataFrame, today: pd.DataFrame, recipe: dict[str, Any]) -> tuple[np.ndarray, float]:
    model, cpu = _timed_fit(rows, recipe)
    return predict_scores(model, today), cpu


def _score_saved(path: str, today: pd.DataFrame, cpu_seconds: float) -> tuple[np.ndarray, float]:
    """A refit the replay already made (`ShadowRefits`), scored on the rows of its day."""
    return predict_scores(joblib.load(path), today), cpu_seconds


def daily_recipe(spec: DatasetSpec, first: Any) -> dict[str, Any]:
    """The first trained model's recipe as `fit_recipe` takes it: what the weekly and daily rows refit."""
    window = _tag_number(first.tags, "mlops.window_days")
    space = SearchSpace.from_dict(spec.search)
    return {
        "family": first.tags["mlops.family"],
        "params": json.loads(first.tags.get("mlops.params", "{}")),
        "window_days": int(window) if window is not None else None,
        "half_life_days": _tag_number(first.tags, "mlops.half_life_days"),
        "target": spec.target.name,
        "time_column": "event_time",
        "numeric": spec.numeric_features,
        "categorical": spec.categorical_features,
        "task": spec.task,
        "seed": space.seed,
        "max_rows": space.max_rows,
    }


def _known_rows(known: pd.DataFrame, recipe: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows a morning's refit trains on (window and row cap applied) and the recipe left to apply."""
    rows = window_rows(known, "event_time", recipe["window_days"], recipe["max_rows"], recipe["seed"])
    return rows, {**recipe, "window_days": None, "max_rows": None}


ORDER = ["event_time", "entity_id", "arrival_day"]  # the store's order of a training frame (unique per label)


def row_hashes(frame: pd.DataFrame) -> np.ndarray:
    """One hash per training row, over every column: which rows a refit saw, with their values."""
    return pd.util.hash_pandas_object(frame, index=False).to_numpy()


def fingerprint(hashes: np.ndarray) -> str:
    """The rows a refit trained on, in their order (order matters: a row cap samples by position)."""
    return hashlib.sha256(np.ascontiguousarray(hashes).tobytes()).hexdigest()


# The worker's copy of every training row sent so far and of their hashes (one worker process, tasks in
# order): each evening the replay sends only the labels that arrived that day, and only those are hashed.
_KNOWN: dict[str, Any] = {"frame": None, "hashes": None, "through": None}


def _fit_next(
    new: pd.DataFrame, since: dt.date | None, day: dt.date, recipe: dict[str, Any], path: str
) -> tuple[float, str]:
    """Add the day's rows to the worker's copy, fit the next morning's refit on it and save it."""
    if _KNOWN["through"] != since:
        raise RuntimeError(f"the worker holds rows through {_KNOWN['through']}, not {since}: rows were lost")
    if _KNOWN["frame"] is None:
        frame, hashes = new.reset_index(drop=True), row_hashes(new)
    else:
        frame = pd.concat([_KNOWN["frame"], new], ignore_index=True)
        hashes = np.concatenate([_KNOWN["hashes"], row_hashes(new)])
    order = frame.sort_values(ORDER, kind="stable").index.to_numpy()
    known = frame.take(order).reset_index(drop=True)
    _KNOWN.update(frame=known, hashes=hashes[order], through=day)
    model, cpu = _timed_fit(*_known_rows(known, recipe))
    joblib.dump(model, path)
    return cpu, fingerprint(_KNOWN["hashes"])


MAX_WAITING_FITS = 64


@dataclass(frozen=True)
class ShadowFit:
    path: str
    cpu_seconds: float
    fingerprint: str
    version: str  # the first trained version whose recipe it refit


class ShadowRefits:
    """The daily-refit row of the comparison, fitted while the replay runs.

    A replay keeps one core busy (Dagster's runs are sequential and mostly single-threaded) and the other one
    idle, and the comparison then refit the first model's recipe every morning of the year, ~300 fits, after
    the replay was over. Each evening the replay hands the day's labelled rows to a worker process on the
    idle core, which fits the next morning's refit and saves it; the comparison scores the saved model on the
    same rows and refits only a morning it has no matching model for (a stopped or resumed replay, a corrected
    day). The rows are the store's ordered training frame either way, so the numbers are the same.
    """

    def __init__(self, spec: DatasetSpec, settings: Settings) -> None:
        self.spec, self.settings = spec, settings
        self.folder = settings.data_dir / "cache" / "strategies" / spec.name / "shadow"
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._recipe: dict[str, Any] | None = None
        self._version = ""
        self._as_of: dt.date | None = None
        self._pool: Any = None
        self._pending: dict[dt.date, Future[tuple[float, str]]] = {}
        self._sent: dt.date | None = None  # the worker has every training row arrived by this day

    def _first_model(self) -> bool:
        if self._recipe is None:
            from mlops_assets.defs.resources import ModelRegistryResource

            registry = ModelRegistryResource(
                tracking_uri=self.settings.mlflow_tracking_uri, artifact_root=self.settings.mlflow_artifact_root
            )
            first = _first_trained_version(registry, self.spec.model_name)
            if first is None:
                return False
            self._recipe, self._version = daily_recipe(self.spec, first), str(first.version)
            self._as_of = dt.date.fromisoformat(first.tags["mlops.training_as_of"])
        return True

    def after_day(self, day: dt.date) -> None:
        """Start the refit of the next morning on every label arrived by the end of `day`."""
        if not self._first_model():
            return
        assert self._recipe is not None and self._as_of is not None
        if day < self._as_of:
            return
        new = store_for(self.settings, self.spec).training_frame(day, arrived_after=self._sent)
        if self._pool is None:  # loky's spawned worker: the replay's process holds Dagster's and DuckDB's state
            from joblib.externals.loky import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(max_workers=1)
        # Each waiting fit holds its day's new rows in this process (a day of labels, not the history): the
        # worker may fall behind by weeks before the replay waits for it.
        waiting = [f for f in self._pending.values() if not f.done()]
        if len(waiting) >= MAX_WAITING_FITS:
            wait(waiting[: len(waiting) - MAX_WAITING_FITS + 1])
        morning = day + dt.timedelta(days=1)
        path = str(self.folder / f"{morning.isoformat()}.joblib")
        self._pending[morning] = self._pool.submit(_fit_next, new, self._sent, day, self._recipe, path)
        self._sent = day

    def results(self) -> dict[dt.date, ShadowFit]:
        """Every refit that finished, by morning (waits for the ones still running)."""
        out: dict[dt.date, ShadowFit] = {}
        for morning, future in self._pending.items():
            try:
                cpu, rows = future.result()
            except Exception:  # the comparison refits that morning itself
                continue
            out[morning] = ShadowFit(str(self.folder / f"{morning.isoformat()}.joblib"), cpu, rows, self._version)
        self.close()
        return out

    def close(self) -> None:
        """Let the worker go; a fit still running is killed, not awaited (a stopped replay does not wait for
        it). The kill is waited for: done on loky's management thread without waiting, it never ran when the
        process exited right after a SIGTERM, and the worker outlived the replay as an orphan."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, kill_workers=True)
            self._pool = None


def compare_strategies(result: ReplayResult) -> StrategyComparison:
    from mlops_assets.defs.resources import ModelRegistryResource

    spec, settings, shadow = result.spec, result.settings, result.shadow
    store = store_for(settings, spec)
    registry = ModelRegistryResource(
        tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
    )
    first = _first_trained_version(registry, spec.model_name)
    if first is None:
        return StrategyComparison(
            spec.metric,
            pd.DataFrame(),
            pd.DataFrame(),
            "No trained model in this replay yet: nothing to compare.",
        )
    as_of = dt.date.fromisoformat(first.tags["mlops.training_as_of"])
    last = result.days[-1].day
    frame = store.training_frame(last)
    hashes = row_hashes(frame)  # before the day columns become dates: as the replay's worker hashed them
    frame["event_day"] = pd.to_datetime(frame["event_day"]).dt.date
    frame["arrival_day"] = pd.to_datetime(frame["arrival_day"]).dt.date
    period = frame[frame["event_day"] > as_of].reset_index(drop=True)

    # continuous: the prediction log, joined to the same rows
    served = store.scored_labels(as_of + dt.timedelta(days=1), last)
    log = store.predictions_after(as_of)
    period = period.merge(log.rename(columns={"score": "continuous"}), on=["entity_id", "event_time"], how="left")

    # never: the first trained model, frozen
    model0 = load_verified(
        f"models:/{spec.model_name}/{first.version}",
        first.tags["mlops.model_sha256"],
        settings.mlflow_tracking_uri,
    ).model
    period["never"] = predict_scores(model0, period[spec.feature_names])

    # daily: the first model's recipe (family, hyper-parameters, window, weighting, row cap) refit every
    # morning on every label known by then, the blind schedule many teams run
    recipe_kwargs = daily_recipe(spec, first)
    family, window, half_life = recipe_kwargs["family"], recipe_kwargs["window_days"], recipe_kwargs["half_life_days"]
    space = SearchSpace.from_dict(spec.search)
    days_sorted = sorted(period["event_day"].unique())
    block_len = 7
    # refit candidates for the weekly row and the oracle: the daily refit of the first day of each week, which
    # then scores every later row too (no extra training: the daily strategy fits that very model anyway)
    n_weeks = (days_sorted[-1] - days_sorted[0]).days // block_len + 1
    candidate_days = {days_sorted[0] + dt.timedelta(days=block_len * k) for k in range(n_weeks)}
    first_arrival = frame["arrival_day"].min()
    jobs = []
    for day in days_sorted:
        if first_arrival >= day:
            continue  # nothing known yet that morning
        scope = period["event_day"] >= day if day in candidate_days else period["event_day"] == day
        jobs.append((day, np.flatnonzero(scope.to_numpy())))

    reused: list[dt.date] = []  # the mornings whose refit the replay's worker made

    def tasks() -> Any:
        """Each refit's rows are cut only when a worker is about to take it (joblib pre-dispatches a few):
        a year of training windows held at once would not fit in memory."""
        for day, idx in jobs:
            seen = (frame["arrival_day"] < day).to_numpy()
            known = frame[seen]
            today = period.iloc[idx][spec.feature_names]
            saved = shadow.get(day)
            if (
                saved is not None
                and saved.version == str(first.version)
                and saved.fingerprint == fingerprint(hashes[seen])
            ):
                reused.append(day)
                yield delayed(_score_saved)(saved.path, today, saved.cpu_seconds)
                continue
            # window and row cap applied here so that each worker receives only the rows it trains on
            rows, rest = _known_rows(known, recipe_kwargs)
            yield delayed(refit)(rows, today, rest)

    # one refit per core: the replay is over, both cores are free, and each worker measures its own CPU. Each
    # refit is cached on disk by its inputs: a second comparison of the same replay refits nothing, and reports
    # the CPU measured when the refit ran.
    cache = Memory(location=str(settings.data_dir / "cache" / "strategies" / spec.name), verbose=0)
    refit = cache.cache(_refit_and_score)
    outputs = Parallel(n_jobs=2)(tasks())
    daily = np.full(len(period), np.nan)
    cpu = 0.0
    candidates: dict[dt.date, tuple[np.ndarray, np.ndarray, float]] = {}
    for (day, idx), (scores, seconds) in zip(jobs, outputs, strict=True):
        today_mask = (period["event_day"].to_numpy()[idx]) == day
        daily[idx[today_mask]] = scores[today_mask]
        cpu += seconds
        if day in candidate_days:
            candidates[day] = (idx, scores, seconds)
    period["daily"] = daily

    # blocks of a week from the first day; the weekly refit serves each block with its first day's refit
    period["block"] = (
        (pd.to_datetime(period["event_day"]) - pd.Timestamp(days_sorted[0])).dt.days // block_len
    ).astype(int)
    n_blocks = int(period["block"].max()) + 1 if len(period) else 0
    block_day = {b: days_sorted[0] + dt.timedelta(days=block_len * b) for b in range(n_blocks)}
    cand_scores = np.full((n_blocks, len(period)), np.nan)
    cand_cpu = np.zeros(n_blocks)
    for b in range(n_blocks):
        got = candidates.get(block_day[b])
        if got is None:  # no rows on the block's first day: the nearest earlier candidate stands in
            prev = [c for c in range(b) if block_day[c] in candidates]
            got = candidates[block_day[prev[-1]]] if prev else None
            if got is None:
                cand_cpu[b] = np.inf  # no model to refit here: the oracle cannot pick this week
                continue
            cand_cpu[b] = 0.0
        else:
            cand_cpu[b] = got[2]
        idx, scores, _ = got
        cand_scores[b, idx] = scores
    blocks = period["block"].to_numpy()
    period["weekly"] = cand_scores[blocks, np.arange(len(period))]

    strategies = ["continuous", "never", "weekly", "daily"]
    keep = period[strategies].notna().all(axis=1).to_numpy()
    period, cand_scores = period[keep].reset_index(drop=True), cand_scores[:, keep]
    blocks = period["block"].to_numpy()
    y = period[spec.target.name].to_numpy()
    cost = spec.policy.cost
    sign = 1.0 if higher_is_better(spec.metric) else -1.0

    def block_metric(pred: np.ndarray) -> np.ndarray:
        out = np.full(n_blocks, np.nan)
        for b in range(n_blocks):
            m = blocks == b
            if m.any() and (spec.task == "regression" or len(np.unique(y[m])) > 1):
                with np.errstate(all="ignore"):
                    out[b] = score(spec.metric, y[m], pred[m])
        return out

    ref = block_metric(period["daily"].to_numpy())
    block_days = np.array([len(np.unique(period.loc[blocks == b, "event_day"])) for b in range(n_blocks)], float)
    # staleness of a candidate in a block: how much worse than the morning's refit it serves it, in metric
    # units (negative when it served better); NaN where it does not exist yet
    gaps = np.full((n_blocks, n_blocks), np.nan)
    for i in range(n_blocks):
        later = blocks >= i
        pred = np.where(later, cand_scores[i], np.nan)
        if np.isnan(pred[later]).any():
            continue
        gaps[i, i:] = (sign * (ref - block_metric(np.nan_to_num(pred))))[i:]
    oracle = hindsight_schedule(gaps, block_days, cand_cpu, cost.staleness_price, cost.cpu_second_price)
    starts = [*oracle.refits, n_blocks]
    serving = np.zeros(n_blocks, dtype=int)
    for a, b in itertools.pairwise(starts):
        serving[a:b] = a
    period["oracle"] = cand_scores[serving[blocks], np.arange(len(period))]
    strategies.append("oracle")

    period["month"] = pd.to_datetime(period["event_day"]).dt.to_period("M")
    monthly = pd.DataFrame(
        {
            s: {
                str(m): score(spec.metric, g[spec.target.name].to_numpy(), g[s].to_numpy())
                for m, g in period.groupby("month")
            }
            for s in strategies
        }
    )
    cont_cpu = sum(r["cpu_seconds"] for r in result.retrains)
    first_cpu = next(
        (r["cpu_seconds"] for r in result.retrains if r.get("candidate_version") == str(first.version)),
        float(first.tags.get("mlops.cpu_seconds", 0.0)),
    )
    retrains = {
        "continuous": len(result.retrains),
        "never": 1,
        "weekly": n_blocks,
        "daily": int(period["event_day"].nunique()),
        "oracle": len(oracle.refits),
    }
    cpus = {
        "continuous": cont_cpu,
        "never": first_cpu,
        "weekly": float(cand_cpu[np.isfinite(cand_cpu)].sum()),
        "daily": cpu,
        "oracle": oracle.cpu_seconds,
    }
    stale = {
        s: cost.staleness_price * float(np.nansum(sign * (ref - block_metric(period[s].to_numpy())) * block_days))
        for s in strategies
    }
    totals = pd.DataFrame(
        {
            spec.metric: {s: round(score(spec.metric, y, period[s].to_numpy()), 4) for s in strategies},
            "retrains": retrains,
            "training CPU s": {s: round(cpus[s], 1) for s in strategies},
            "staleness cost": {s: round(stale[s], 1) for s in strategies},
            "total cost": {s: round(stale[s] + cost.cpu_second_price * cpus[s], 1) for s in strategies},
        }
    )
    recipe = f"{family}, window {window or 'all'} days, half-life {half_life or 'none'}, max {space.max_rows} rows"
    note = (
        f"Same rows for all: {len(period)} labelled events from {period['event_day'].min()} to "
        f"{period['event_day'].max()}, after the first trained model (v{first.version}, as of {as_of}).\n"
        f"continuous = what was served (the prediction log); never = v{first.version} frozen; "
        f"weekly / daily = v{first.version}'s recipe ({recipe}) refit on the first day of each 7-day block / "
        "every morning; "
        f"oracle = the cheapest schedule of weekly refits in hindsight ({len(oracle.refits)} of {n_blocks} blocks).\n"
        f"Cost = staleness_price {cost.staleness_price:g} x (metric lost against the morning's refit, per week, "
        f"times its days) + cpu_second_price {cost.cpu_second_price:g} x training CPU-s; the daily refit has no "
        f"staleness by definition, and a negative staleness means better than it.\n"
        f"Training CPU s: continuous counts every sweep trial and refit of every retrain, never counts "
        f"v{first.version}'s sweep, daily counts its {int(period['event_day'].nunique())} refits, weekly and the "
        f"oracle the refits they use. {len(served)} served predictions were scored in this period. "
        f"{len(reused)} of the {len(jobs)} daily refits were made during the replay."
    )
    return StrategyComparison(spec.metric, monthly, totals, note)
