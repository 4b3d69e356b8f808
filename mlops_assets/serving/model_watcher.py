"""Follow the registry's `champion` alias and swap the served model without dropping a request.

The served model and its version live in one immutable object behind one attribute. A request reads that
attribute once and uses what it got, so it can never pair the new version's name with the old model's
scores (or the reverse), and it never waits: the swap is a single reference assignment. A new version is
downloaded, checked against the checksum recorded at registration and loaded *before* the swap; if any of
that fails the old model keeps serving and the error is kept for `/model` to show. No lock is held while a
model loads: a slow download must not stall requests or the thread that answers `/health`.

What the service says about a failure is written for whoever calls it: `status.error` names the version and
the rule it broke (checksum, format, untrusted type, cannot score), never a local path, a run id or an
exception's text; the full exception goes to the log.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlops_assets.defs.resources import CHAMPION_ALIAS, ChampionInfo, ModelRegistryResource

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 300.0


class ModelRefused(ValueError):
    """A version the service will not serve; the message is safe to show to a client."""


@dataclass(frozen=True)
class ServedModel:
    """What answers requests: a version, its loaded model and the scorer built from it, always together."""

    info: ChampionInfo
    model: Any
    loaded_at: dt.datetime
    scoring: Any = None  # `serving.scoring.Scoring`; None: score with the model itself

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def version(self) -> str:
        return self.info.version


@dataclass(frozen=True)
class RefreshStatus:
    """The outcome of the last look at the registry, kept apart from the served model so that a failed load
    is visible while the previous model still serves."""

    checked_at: dt.datetime | None = None
    alias_version: str | None = None
    error: str | None = None
    error_at: dt.datetime | None = None
    ok_at: dt.datetime | None = None  # the last lookup that reached the registry
    registry_error: bool = False  # the last lookup did not reach the registry (as opposed to a refused model)


@dataclass
class _Failure:
    attempts: int
    retry_after: float  # time.monotonic() before which the poll loop does not try this version again
    message: str = field(default="")


def artifact_uri(info: ChampionInfo) -> str:
    """The URI to download a version from: its source (the logged model, e.g. `models:/m-…`), which is what
    the registry assets digested into `mlops.model_sha256`.

    Not `models:/<name>/<version>`: for that URI MLflow writes a `registered_model_meta` file naming the
    model and version into the download, so its digest can never equal the one recorded at registration
    (taken from the source, where that file says `null`) and every load would be refused.
    """
    return info.source or info.model_uri


def public_reason(exc: BaseException) -> str:
    """Why a version was refused, in words safe for a client: the rule, not the exception's text (which may
    hold paths, URIs or run ids; it goes to the log)."""
    from mlops_assets.ml.models import UnsafeModelError
    from mlops_assets.storage.models import ArtifactIntegrityError

    if isinstance(exc, ArtifactIntegrityError):
        return "its artifact checksum does not match the one recorded at registration"
    if isinstance(exc, UnsafeModelError | ModelRefused):
        return str(exc)
    return f"it failed to load ({type(exc).__name__})"


def verified_loader(registry: ModelRegistryResource) -> Callable[[ChampionInfo], Any]:
    """The production loader: download the version's artifact, check it against the checksum recorded at
    registration, then deserialize (all in `storage.models.load_verified`, the one door models come in by)."""

    def load(info: ChampionInfo) -> Any:
        from mlops_assets.storage.models import load_verified

        if not info.tags.get("mlops.model_sha256"):
            raise ModelRefused("it has no recorded checksum (`mlops.model_sha256`), so it cannot be verified")
        return load_verified(artifact_uri(info), info.model_sha256, registry.tracking_uri).model

    return load


class ChampionWatcher:
    """Serve whatever `models:/<name>@champion` names, polling the registry in a background thread.

    `current` is safe to read from any thread without a lock. `refresh()` may be called from any thread too
    (the poll loop, a test, an admin hook); refreshes that overlap each load on their own and the one that
    looked at the registry last wins, so a slow load of an older alias target never replaces a newer one.
    """

    def __init__(
        self,
        registry: ModelRegistryResource,
        model_name: str,
        *,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        loader: Callable[[ChampionInfo], Any] | None = None,
        prepare: Callable[[ChampionInfo, Any], Any] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.registry = registry
        self.model_name = model_name
        self.interval = float(interval)
        self._load = loader or verified_loader(registry)
        # Builds what scores (a compiled scorer proven equal, or the plain model) before the swap; raising
        # refuses the version like a failed load. Cached per (version, checksum): a rollback is instant.
        self._prepare = prepare
        self._prepared: dict[tuple[str, str], Any] = {}
        self._current: ServedModel | None = None
        self._status = RefreshStatus()
        # Guards only the bookkeeping below (a counter compare and two assignments), never a load.
        self._swap_lock = threading.Lock()
        self._ticket = 0  # increases every time the registry is read
        self._installed_ticket = -1  # ticket of the read that produced `_current` (or confirmed it)
        self._status_ticket = -1  # ticket of the read that `_status` reports
        self._failures: dict[tuple[str, str], _Failure] = {}
        self.last_answer_at: dt.datetime | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- what requests read -----------------------------------------------------------------------------
    @property
    def current(self) -> ServedModel | None:
        """The model serving now (None before the first successful load); one atomic read."""
        return self._current

    @property
    def status(self) -> RefreshStatus:
        return self._status

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}@{CHAMPION_ALIAS}"

    # --- refreshing -------------------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Look the alias up once; load, verify and swap in its version if it is not the one serving.

        Returns True only when the served model changed. Every failure (registry unreachable, alias unset,
        checksum mismatch, unloadable artifact) is recorded in `status` and leaves the served model alone;
        nothing is raised, because a poll that raises would kill the thread that keeps the service current.
        """
        return self._refresh(respect_backoff=False)

    def _refresh(self, *, respect_backoff: bool) -> bool:
        with self._swap_lock:
            self._ticket += 1
            ticket = self._ticket
        now = dt.datetime.now(dt.UTC)
        try:
            info = self.registry.champion_info(self.model_name)
        except Exception as exc:  # any registry failure: keep serving
            log.warning("could not resolve %s: %s: %s", self.model_uri, type(exc).__name__, exc)
            problem = f"registry unreachable ({type(exc).__name__}); still serving {self._describe(self._current)}"
            self._record(ticket, now, None, problem, registry_error=True)
            return False
        self.last_answer_at = now  # the registry answered (a load may follow, for a while)
        if info is None:
            # champion_info() answers None both before the first model and when MLflow cannot be asked.
            self._record(ticket, now, None, f"{self.model_uri} is not set (or the registry is unreachable)")
            return False

        served = self._current
        if served is not None and served.version == info.version:
            with self._swap_lock:
                self._installed_ticket = max(self._installed_ticket, ticket)
            self._record(ticket, now, info.version, None)
            return False

        key = (info.version, info.tags.get("mlops.model_sha256", ""))
        failure = self._failures.get(key)
        if respect_backoff and failure is not None and time.monotonic() < failure.retry_after:
            self._record(ticket, now, info.version, failure.message)
            return False

        try:
            model = self._load(info)  # the slow part: download, verify, deserialize; no lock held
            scoring = self._prepared.get(key)
            if scoring is None and self._prepare is not None:
                scoring = self._prepare(info, model)
                if len(self._prepared) >= 8:
                    self._prepared.pop(next(iter(self._prepared)))
                self._prepared[key] = scoring
        except Exception as exc:  # a bad version never stops the old one
            msg = f"v{info.version} refused: {public_reason(exc)}; still serving {self._describe(self._current)}"
            attempts = failure.attempts + 1 if failure else 1
            delay = min(self.interval * 2 ** (attempts - 1), MAX_BACKOFF_SECONDS)
            self._failures[key] = _Failure(attempts, time.monotonic() + delay, msg)
            if failure is None or failure.message != msg:
                log.error("%s (%s: %s)", msg, type(exc).__name__, exc)
            self._record(ticket, now, info.version, msg)
            return False

        new = ServedModel(info=info, model=model, loaded_at=dt.datetime.now(dt.UTC), scoring=scoring)
        with self._swap_lock:
            if ticket < self._installed_ticket:
                # A refresh that read the registry after us has already installed (or confirmed) a model.
                log.info("discarding v%s: a newer alias lookup already decided what serves", info.version)
                return False
            previous = self._current
            self._current = new
            self._installed_ticket = ticket
        self._failures.pop(key, None)
        self._record(ticket, now, info.version, None)
        log.info("now serving %s v%s (was %s)", self.model_name, info.version, self._describe(previous))
        return True

    def _record(
        self,
        ticket: int,
        at: dt.datetime,
        alias_version: str | None,
        error: str | None,
        *,
        registry_error: bool = False,
    ) -> None:
        with self._swap_lock:
            if ticket < self._status_ticket:
                return  # a later lookup has already reported; an overlapping slow one must not overwrite it
            self._status_ticket = ticket
            prev = self._status
            # error_at says since when the *same* problem persists, which is what an operator wants to know.
            error_at = (prev.error_at if error == prev.error else at) if error else None
            self._status = RefreshStatus(
                checked_at=at,
                alias_version=alias_version,
                error=error,
                error_at=error_at,
                ok_at=prev.ok_at if registry_error else at,
                registry_error=registry_error,
            )

    @staticmethod
    def _describe(served: ServedModel | None) -> str:
        return f"v{served.version}" if served is not None else "no model"

    # --- background polling ---------------------------------------------------------------------------
    def start(self, *, initial_refresh: bool = True) -> None:
        """Start polling. The first refresh runs in the caller by default, so that a service that reports
        "started" already serves the champion when one exists and loads."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("watcher already running")
        self._stop.clear()
        if initial_refresh:
            self.refresh()
        self._thread = threading.Thread(target=self._run, name=f"champion-watcher[{self.model_name}]", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._refresh(respect_backoff=True)
            except Exception:  # pragma: no cover - _refresh records its own errors; this guards the thread
                log.exception("champion watcher poll failed")

    def stop(self, timeout: float | None = None) -> None:
        """Stop polling and wait for the thread; a load in progress finishes first (it cannot be cut short
        safely), so `timeout` bounds the wait, not the load."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout if timeout is not None else self.interval + 60.0)
            if not thread.is_alive():
                self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> ChampionWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
