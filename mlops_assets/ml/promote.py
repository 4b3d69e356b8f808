"""The promotion gate: the champion changes only when the challenger is better, with confidence, everywhere
that matters. Every refusal names the rule that failed and the numbers.

Also the two things that make a promotion hold when several runs want to move the alias at once: `run_gate`,
the one evaluation that both a retrain and a person's approval go through, and `champion_lock`, the mutex
under which the alias is read, compared with the version the gate judged against, and written.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops_assets.ml.evaluate import Comparison, compare_models


@dataclass(frozen=True)
class GatePolicy:
    min_delta: float = 0.002  # required improvement in metric units (positive = better)
    confidence: float = 0.95  # level of the paired-bootstrap interval whose lower bound must reach min_delta
    max_slice_regression: float = 0.02  # no slice may be worse than the champion by more than this
    require_approval: bool = False
    min_slice_rows: int = 1000  # smaller slices are reported but cannot veto (their metric is mostly noise)


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    status: str  # "promoted" | "rejected" | "pending_approval" | "first_model"
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_promotion(
    comparison: Comparison | None,
    policy: GatePolicy,
    *,
    champion_is_baseline: bool,
    refit_of_champion: bool = False,
) -> PromotionDecision:
    """`refit_of_champion`: the challenger is the champion's own recipe fit on newer rows. Its recipe already
    won a gate, so it must only not be surely worse by more than the margin (the interval's upper bound at or
    above minus the margin), where a new recipe must be better by it: a refit is routine maintenance, and the
    gate's job there is to stop a broken one (bad new data, a failed fit), not to make fresher data prove
    itself on a few days of rows."""
    if comparison is None:
        return PromotionDecision(False, "rejected", "no comparison: the challenger was not evaluated")
    c = comparison
    if not np.isclose(c.confidence, policy.confidence):
        # An interval at another level than the policy's would silently change the rule: fail instead.
        raise ValueError(
            f"the comparison's interval is at {c.confidence:.0%} but the gate requires {policy.confidence:.0%}: "
            "pass confidence=policy.confidence to compare_models"
        )
    if not (np.isfinite(c.delta) and np.isfinite(c.ci_low)):
        return PromotionDecision(
            False,
            "rejected",
            f"{c.metric} could not be computed on the hold-out (delta {c.delta}, CI low {c.ci_low}, n={c.n}): "
            "nothing shows the challenger is better",
        )
    nums = (
        f"{c.metric} {c.challenger:.4f} vs {c.champion:.4f}, delta {c.delta:+.4f}, "
        f"{c.confidence:.0%} CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}], n={c.n}"
    )
    if refit_of_champion and not champion_is_baseline:
        if c.ci_high < -policy.min_delta:
            return PromotionDecision(
                False,
                "rejected",
                f"refit of the champion's recipe is worse than the champion by more than the margin "
                f"{policy.min_delta:g} with confidence: {nums}",
            )
        return _slice_veto(c, policy, nums) or _approval(
            policy, "promoted", f"refit of the champion's recipe on newer rows, not worse: {nums}"
        )
    if champion_is_baseline:
        if c.ci_low > 0:
            return _approval(policy, "first_model", f"first trained model beats the baseline: {nums}")
        return PromotionDecision(False, "rejected", f"does not beat even the baseline with confidence: {nums}")
    if c.delta <= 0:
        return PromotionDecision(False, "rejected", f"challenger is not better than the champion: {nums}")
    if c.delta < policy.min_delta:
        return PromotionDecision(False, "rejected", f"improvement below the margin {policy.min_delta:g}: {nums}")
    if not c.ci_low > 0:
        return PromotionDecision(False, "rejected", f"improvement not significant (CI includes 0): {nums}")
    if c.ci_low < policy.min_delta:
        # "Better by the margin, with confidence" is the interval's lower bound at the margin, not the point
        # estimate: a challenger that is only surely better than nothing is a coin toss on the next month.
        # On the flights replay, one promoted this way (CI low +0.0002, margin 0.003) lost October to the
        # champion it replaced.
        return PromotionDecision(
            False,
            "rejected",
            f"improvement not shown to reach the margin {policy.min_delta:g} with {c.confidence:.0%} confidence: "
            f"{nums}",
        )
    return _slice_veto(c, policy, nums) or _approval(policy, "promoted", f"better with confidence: {nums}")


def _slice_veto(c: Comparison, policy: GatePolicy, nums: str) -> PromotionDecision | None:
    """A large enough slice that regresses beyond the limit refuses the promotion, whatever the overall gain."""
    judged = c.slices[c.slices["n"] >= policy.min_slice_rows] if len(c.slices) else c.slices
    worst = judged.sort_values("delta").iloc[0] if len(judged) else None
    if worst is not None and worst["delta"] < -policy.max_slice_regression:
        return PromotionDecision(
            False,
            "rejected",
            (
                f"slice {worst['slice_column']}={worst['slice_value']} regresses by {-worst['delta']:.4f} "
                f"(limit {policy.max_slice_regression:g}, n={int(worst['n'])}) although overall {nums}"
            ),
        )
    return None


def _approval(policy: GatePolicy, status: str, reason: str) -> PromotionDecision:
    if policy.require_approval:
        return PromotionDecision(True, "pending_approval", f"{reason}; waiting for a person's approval")
    return PromotionDecision(True, status, reason)


@dataclass(frozen=True)
class GateOutcome:
    """What the gate saw and what it decided; the challenger's scores are kept for the evaluation's report."""

    comparison: Comparison
    decision: PromotionDecision
    challenger_scores: np.ndarray


def run_gate(
    challenger: Any,
    champion: Any | None,
    holdout: pd.DataFrame,
    *,
    features: Sequence[str],
    target: str,
    metric: str,
    slice_columns: Sequence[str],
    policy: GatePolicy,
    champion_is_baseline: bool,
    refit_of_champion: bool = False,
) -> GateOutcome:
    """Challenger against champion (None: no champion yet, judged against the hold-out's mean) on the same
    hold-out rows, then the decision.

    The retrain's evaluation and a person's approval both call this, so an approval is judged by exactly the
    rule that would have promoted the version had it been trained now: a copy of the rule in the approval
    path would drift from the gate the first time one of them is tuned."""
    X, y = holdout[list(features)], holdout[target].to_numpy()
    from mlops_assets.ml.models import predict_scores  # scikit-learn: loaded by the steps that score, not by Dagster

    challenger_scores = predict_scores(challenger, X)
    champion_scores = predict_scores(champion, X) if champion is not None else challenger_scores * 0.0 + float(y.mean())
    comparison = compare_models(
        y,
        challenger_scores,
        champion_scores,
        metric=metric,
        slices=holdout[list(slice_columns)] if slice_columns else None,
        confidence=policy.confidence,
        min_slice_rows=min(200, policy.min_slice_rows),
    )
    decision = decide_promotion(
        comparison, policy, champion_is_baseline=champion_is_baseline, refit_of_champion=refit_of_champion
    )
    return GateOutcome(comparison, decision, challenger_scores)


class ChampionLockTimeout(TimeoutError):
    pass


# Moving the alias is three registry calls (a read and two writes): milliseconds. Two minutes of waiting
# means the holder is stuck, and a mover should fail loudly rather than queue behind it for ever.
LOCK_TIMEOUT_SECONDS = 120.0
_POLL_SECONDS = 0.05


@contextmanager
def champion_lock(tracking_uri: str, model_name: str, *, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[str]:
    """Hold the mutex of one model's champion alias for the length of the block; yields the kind of lock held.

    MLflow has no compare-and-set on aliases, so the read-compare-write of a move is made atomic by a lock
    that every mover takes, whatever launched it (a Dagster step under its pool, the CLI, a script):

    - `sqlite:///` store (embedded): `fcntl.flock` on a file beside the database. SQLite already requires every
      writer to be on the same machine, so a file lock covers every possible writer.
    - `postgresql://` store (production): a session-level `pg_advisory_lock` in that database, on a connection
      of our own; every worker that can write the store can reach it.

    Both are released by the kernel or the database when the holder dies (kill -9, a lost connection), so a
    crashed mover can never leave the alias locked. A lease kept in a registry tag would need an expiry and a
    way to break a stale one, and breaking it safely needs the compare-and-set we do not have; that is why
    the lock lives in the store's own machinery instead.

    Any other URI (an MLflow tracking server over HTTP) gives no way to reach a lock the server's writers
    share: the block runs unlocked and yields "none", and the moves are serialized only by the Dagster pool
    and the run queue's per-dataset limit. The caller records which lock was held.
    """
    if tracking_uri.startswith("sqlite:///"):
        with _file_lock(Path(tracking_uri[len("sqlite:///") :]), model_name, timeout):
            yield "flock"
    elif re.match(r"^postgres(ql)?(\+\w+)?://", tracking_uri):
        with _pg_advisory_lock(tracking_uri, model_name, timeout):
            yield "pg_advisory_lock"
    else:
        yield "none"


def lock_path(db_path: Path, model_name: str) -> Path:
    """One lock file per model beside the SQLite database: models of other datasets never wait on each other."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)
    return db_path.with_name(f"{db_path.name}.{safe}.champion.lock")


@contextmanager
def _file_lock(db_path: Path, model_name: str, timeout: float) -> Iterator[None]:
    path = lock_path(db_path, model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Each holder opens its own file description, so threads of one process exclude each other as processes do.
    with open(path, "a+b") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ChampionLockTimeout(
                        f"the champion lock of {model_name} ({path}) was held for more than {timeout:.0f} s"
                    ) from None
                time.sleep(_POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def advisory_key(model_name: str) -> int:
    """A signed 64-bit key for pg_advisory_lock, stable across processes (Python's hash() is salted)."""
    digest = hashlib.sha256(f"mlops_assets.champion:{model_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def _pg_advisory_lock(uri: str, model_name: str, timeout: float) -> Iterator[None]:
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    key = advisory_key(model_name)
    engine = sa.create_engine(uri, poolclass=NullPool)
    try:
        # Autocommit: the lock is the session's, and no transaction stays open while it is held.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            deadline = time.monotonic() + timeout
            while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                if time.monotonic() > deadline:
                    raise ChampionLockTimeout(
                        f"the champion lock of {model_name} (pg advisory key {key}) was held for more than "
                        f"{timeout:.0f} s"
                    )
                time.sleep(_POLL_SECONDS)
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()
