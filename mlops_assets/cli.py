"""`mlops-assets`: replay a dataset through the loop, inspect it, and act on the champion by hand."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mlops_assets.config import DEFAULT_SPEC, Settings, SpecError, load_spec

if TYPE_CHECKING:
    from mlops_assets.defs.resources import ModelRegistryResource


def _settings(args: argparse.Namespace) -> Settings:
    if getattr(args, "data_dir", None):
        os.environ["MLOPS_DATA_DIR"] = str(Path(args.data_dir).resolve())
    settings = Settings.from_env()
    if getattr(args, "spec", None):
        # A command acts on one dataset; the deployment may list several (MLOPS_SPECS), each kept apart.
        os.environ["MLOPS_SPEC"] = str(Path(args.spec).resolve())
        os.environ.pop("MLOPS_SPECS", None)
        settings = settings.with_spec(args.spec)
    return settings


def cmd_replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mlops_assets import stopping
    from mlops_assets.replay import replay
    from mlops_assets.summary import render_summary

    settings = _settings(args)
    spec = load_spec(settings.spec_path)
    start = dt.date.fromisoformat(args.start) if args.start else spec.replay.start
    end = dt.date.fromisoformat(args.end) if args.end else spec.replay.end
    if args.days:
        end = min(end, start + dt.timedelta(days=args.days - 1))
    total = (end - start).days + 1
    print(f"Replaying {spec.name} from {start} to {end} ({total} days) into {settings.data_dir}", flush=True)
    bar = tqdm(total=total, unit="day", disable=args.quiet, file=sys.stderr)

    def on_day(rec: object) -> None:
        bar.update(1)
        bar.set_postfix_str(
            f"{rec.day} drift={'-' if rec.drift_share is None else f'{rec.drift_share:.2f}'} "  # type: ignore[attr-defined]
            f"champion=v{rec.champion_version}"  # type: ignore[attr-defined]
        )
        if rec.retrain:  # type: ignore[attr-defined]
            r = rec.retrain  # type: ignore[attr-defined]
            bar.write(f"{rec.day}: retrain ({r['trigger']}) -> {r['decision']}: {r['gate_reason']}")  # type: ignore[attr-defined]

    result = replay(
        settings.spec_path,
        settings,
        start=start,
        end=end,
        fresh=not args.resume,
        on_day=on_day,
        resume=args.resume,
        shadow_refits=not args.no_compare,
    )
    bar.close()
    if result.stopped:
        last = result.days[-1].day.isoformat() if result.days else "none"
        print(
            f"{spec.name}: stopped by {result.stopped}; last complete day {last} ({len(result.days)} of {total} days); "
            f"continue with `mlops-assets replay --spec {settings.spec_path} --resume`",
            flush=True,
        )
        # Everything is on disk (runs settled, the day's state written atomically): leave now. The interpreter's
        # teardown (native libraries closing) took 8 s of a 10 s budget on a loaded 2-core machine.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + int(signal.Signals[result.stopped]))
    with stopping.stop_on_signals() as stop:
        try:
            text = render_summary(result, compare=not args.no_compare)
        except KeyboardInterrupt:
            # the comparison's refits may run in worker processes of ours: stop them too, not after they finish
            for child in multiprocessing.active_children():
                child.terminate()
            print(
                f"{spec.name}: stopped by {stop.name or 'an interrupt'} during the comparison; the replay is complete"
            )
            return 128 + (stop.signal or signal.SIGINT)
    print(text, flush=True)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """The spec's own rules first (every mistake with its key path); then, unless --no-data, the spec against
    its data: every problem at once, so one run of `validate` is enough to fix a spec."""
    from mlops_assets.datasets.infer import check_spec_data

    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    # an S3 source is mirrored with the deployment's credentials and endpoint (AWS_*, MLOPS_S3_ENDPOINT_URL)
    problems = [] if args.no_data else check_spec_data(spec)
    if problems:
        print(f"{args.spec}: {len(problems)} problem(s) against its data", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 2
    checked = "" if args.no_data else ", checked against its data"
    print(
        f"{args.spec}: valid ({spec.name}: {spec.task}, {len(spec.feature_names)} features, metric {spec.metric}"
        f"{checked})"
    )
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Write a spec for a data file the project has never seen; it is checked against the data before the
    command says it is ready, so `init` then `replay` is all a new dataset needs."""
    from mlops_assets.datasets.infer import InferError, check_spec_data, infer_spec, write_spec

    entity = [c for e in (args.entity or []) for c in e.split(",") if c]
    try:
        if args.task == "ranking":  # a recommender's interactions (datasets/infer_ranking.py)
            from mlops_assets.datasets.infer_ranking import infer_ranking_spec

            if not (args.user and args.item):
                raise InferError("--task ranking needs --user and --item (the interaction's columns)")
            raw = infer_ranking_spec(args.data_file, user=args.user, item=args.item, time=args.time, target=args.target)
        elif not args.target:
            raise InferError("--target is required (the column to predict), except with --task ranking")
        else:
            raw = infer_spec(args.data_file, target=args.target, time=args.time, entity=entity, task=args.task)
    except InferError as exc:
        print(exc, file=sys.stderr)
        return 2
    out = Path(args.output or f"{raw['name']}.yaml")
    write_spec(raw, out)
    spec = load_spec(out)
    problems = check_spec_data(spec)
    if problems:
        print(f"{out}: written, but {len(problems)} problem(s) against its data:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 2
    days = (spec.replay.end - spec.replay.start).days + 1
    print(
        f"{out}: {spec.name} ({spec.task}, metric {spec.metric}, {len(spec.schema_)} columns, "
        f"{len(spec.feature_names)} features, {days} days {spec.replay.start}..{spec.replay.end})\n"
        f"next: mlops-assets replay --spec {out}"
    )
    return 0


def _registry(settings: Settings) -> ModelRegistryResource:
    from mlops_assets.defs.resources import ModelRegistryResource

    return ModelRegistryResource(tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root)


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    spec = load_spec(settings.spec_path)
    reg = _registry(settings)
    champ = reg.champion_info(spec.model_name)
    if champ is None:
        print(f"{spec.model_name}: no champion yet")
        return 0
    print(
        f"{spec.model_name}: champion v{champ.version} (baseline: {champ.is_baseline}, "
        f"hold-out {spec.metric}: {champ.holdout_metric})"
    )
    for move in reg.history(spec.model_name)[-10:]:
        print(f"  {move['at']}  v{move['previous']} -> v{move['version']}  by {move['actor']}: {move['reason']}")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    from mlops_assets.defs.registry.actions import RegistryActionError
    from mlops_assets.defs.registry.jobs import run_registry_action

    settings = _settings(args)
    try:
        # Through approve_job, like the UI's launchpad: the move is a run and lands in the champion's metadata.
        config = {"version": args.version, "actor": args.actor or getpass.getuser()}
        if args.force:
            # skips the re-run of the gate; the reason is kept in the champion's history with the move
            config |= {"force": True, "force_reason": args.reason or ""}
        print(run_registry_action(settings, "approve_job", config))
    except RegistryActionError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from mlops_assets.defs.registry.actions import RegistryActionError
    from mlops_assets.defs.registry.jobs import run_registry_action

    settings = _settings(args)
    try:
        config = {"reason": args.reason, "actor": args.actor or getpass.getuser()}
        print(run_registry_action(settings, "rollback_job", config))
    except RegistryActionError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from mlops_assets.serving.app import ExposureError, serve

    _settings(args)
    try:
        serve(
            host=args.host,
            port=args.port,
            poll_seconds=args.poll_seconds,
            workers=args.workers,
            access_log=args.access_log,
        )
    except ExposureError as exc:
        print(f"mlops-assets serve: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    from mlops_assets.datasets.quarantine import run_cli

    settings = _settings(args)
    return run_cli(
        settings, args.action, args.day, out=args.out, fixed=args.file, run=not args.no_run, limit=args.limit
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlops-assets", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--spec", default=os.environ.get("MLOPS_SPEC", str(DEFAULT_SPEC)), help="dataset spec YAML")
        sp.add_argument("--data-dir", help="where the embedded profile keeps its state (default ./data)")

    r = sub.add_parser("replay", help="replay the dataset day by day through the continuous-training loop")
    common(r)
    r.add_argument("--start", help="first day (default: the spec's replay.start)")
    r.add_argument("--end", help="last day (default: the spec's replay.end)")
    r.add_argument("--days", type=int, help="replay only this many days")
    r.add_argument(
        "--resume",
        action="store_true",
        help="keep the existing state and continue after the last complete day of a stopped replay",
    )
    r.add_argument("--no-compare", action="store_true", help="skip the never/daily retraining comparison")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_replay)

    v = sub.add_parser("validate", help="check a dataset spec against its data and print every problem")
    v.add_argument("spec")
    v.add_argument("--no-data", action="store_true", help="check the spec's own rules only, not its data")
    v.set_defaults(func=cmd_validate)

    i = sub.add_parser("init", help="write a working dataset spec for a CSV or Parquet file")
    i.add_argument("data_file", help="CSV or Parquet; replayed day by day by its --time column")
    i.add_argument("--target", help="the column to predict (ranking: an optional rating or weight)")
    i.add_argument("--time", required=True, help="the column giving each row's event time")
    i.add_argument("--entity", action="append", help="column(s) identifying what a row is about (repeat, or a,b)")
    i.add_argument(
        "--task", choices=["classification", "regression", "ranking"], help="default: from the target's values"
    )
    i.add_argument("--user", help="ranking: the column naming who interacted")
    i.add_argument("--item", help="ranking: the column naming what they interacted with")
    i.add_argument("-o", "--output", help="where to write the spec (default: NAME.yaml here)")
    i.set_defaults(func=cmd_init)

    s = sub.add_parser("status", help="the champion and its recent moves")
    common(s)
    s.set_defaults(func=cmd_status)

    a = sub.add_parser("approve", help="promote a version waiting for approval")
    common(a)
    a.add_argument("version")
    a.add_argument("--actor")
    a.add_argument("--force", action="store_true", help="promote without re-running the gate (needs --reason)")
    a.add_argument("--reason", help="why the gate is skipped; recorded with the move")
    a.set_defaults(func=cmd_approve)

    rb = sub.add_parser("rollback", help="move the champion back to the previous version")
    common(rb)
    rb.add_argument("--reason", required=True)
    rb.add_argument("--actor")
    rb.set_defaults(func=cmd_rollback)
    sv = sub.add_parser("serve", help="the online prediction API; follows the champion alias")
    common(sv)
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--poll-seconds", type=float, default=10.0, help="how often to check the alias")
    sv.add_argument(
        "--workers", type=int, help="processes sharing the port, each following the alias (default: cores, up to 4)"
    )
    sv.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    sv.set_defaults(func=cmd_serve)
    q = sub.add_parser("quarantine", help="list the rows a day refused, with reasons; replay them after a fix")
    common(q)
    q.add_argument("action", choices=["list", "replay"])
    q.add_argument("day", nargs="?", help="YYYY-MM-DD (list: every day if omitted)")
    q.add_argument("--out", help="list: write the rows as CSV, to fix and replay")
    q.add_argument("--file", help="replay: the fixed rows (CSV from `list --out`); default: the rows as they are")
    q.add_argument("--no-run", action="store_true", help="replay: only stage the rows; do not run the day")
    q.add_argument("--limit", type=int, default=20, help="list: rows to print")
    q.set_defaults(func=cmd_quarantine)
    return p


def _quiet_libraries() -> None:
    """A person reads this console: keep library chatter (beta notices, MLflow creating its tables) out of it;
    the instance and MLflow still record everything."""
    import logging
    import warnings

    from dagster_shared.utils.warnings import BetaWarning, PreviewWarning

    warnings.filterwarnings("ignore", category=BetaWarning)
    warnings.filterwarnings("ignore", category=PreviewWarning)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow configures its loggers
    logging.getLogger("alembic").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
