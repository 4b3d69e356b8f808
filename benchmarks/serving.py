"""`mlops-assets serve` against `mlflow models serve` on the same model and the same one-row request.

    python benchmarks/serving.py [--data-dir DIR --spec SPEC] [--fit-hgb] [--seconds 10]

DIR is a deployment with a champion (e.g. after `mlops-assets replay --days 26` of a flights spec). Without
it the benchmark makes one in a temporary folder: the flights spec with its first model due after 18,000
labelled rows, replayed for 26 days (`mlops-assets replay`, a few minutes), then `--fit-hgb`.
`--fit-hgb` first registers and promotes a histogram gradient boosting model (the family the flights sweep
picks most) fitted on the deployment's feature store through the project's own code: `build_model`,
`log_model`, the artifact digest, `scorer_tags` on the newest hold-out days, `move_champion`.

Both servers run at once on 127.0.0.1 (ports 8100-8199), each with `--workers` processes of one OpenMP
thread, and wrk (the
Debian package, written in C: it is not the bottleneck) drives them in turns with the same request:
1 connection, then 8; then ours at half its own 8-connection peak (wrk's per-connection `delay()`: the
latency of a service that is not saturated). Then the swap run: ours under 8 connections while the alias is
moved back and forth `--swaps` times (promotions and rollbacks through `move_champion`), counting wrk's
non-2xx responses and socket errors, while a checker client verifies that every answer names a version
and carries the score that version gives. Beside req/s and latency it prints the CPU the server's processes
spent per request (from /proc), the figure a shared machine distorts least.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# --- the champion ------------------------------------------------------------------------------------------
def fit_hgb(env: dict[str, str], spec_path: str) -> str:
    """Register and promote an HGB champion the way the registry assets do; returns its version."""
    import mlflow
    import pandas as pd

    from mlops_assets.config import Settings, load_spec
    from mlops_assets.defs.registry.assets import register_version
    from mlops_assets.defs.resources import ModelRegistryResource, ensure_experiment
    from mlops_assets.defs.training.assets import split_days
    from mlops_assets.ml.models import build_model, log_model
    from mlops_assets.serving.scoring import scorer_tags
    from mlops_assets.storage.models import artifact_digest
    from mlops_assets.storage.stores import store_for

    settings = Settings.from_env(env).with_spec(spec_path)
    spec = load_spec(spec_path)
    frame = store_for(settings, spec).training_frame(pd.Timestamp.max.date())
    parts = split_days(frame, spec)
    train = frame[~frame.index.isin(parts["holdout"].index)]
    model = build_model(
        "hist_gradient_boosting",
        {"learning_rate": 0.1, "max_leaf_nodes": 63, "max_iter": 100, "l2_regularization": 0.01},
        task=spec.task,
        numeric=spec.numeric_features,
        categorical=spec.categorical_features,
        seed=0,
    ).fit(train[spec.feature_names], train[spec.target.name].to_numpy())
    registry = ModelRegistryResource(
        tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
    )
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    exp = ensure_experiment(settings.mlflow_tracking_uri, spec.name, settings.mlflow_artifact_root)
    with mlflow.start_run(experiment_id=exp, run_name="benchmark_hgb") as run:
        info = log_model(model, name="model", input_example=train[spec.feature_names].head(2))
    sha = artifact_digest(info.model_uri, settings.mlflow_tracking_uri)
    tags = {
        "mlops.is_baseline": "false",
        "mlops.metric": spec.metric,
        "mlops.model_sha256": sha,
        "mlops.family": "hist_gradient_boosting",
        "mlops.gate": "benchmark",
        **scorer_tags(info.model_uri, sha, settings.mlflow_tracking_uri, parts["holdout"], spec),
    }
    mv = register_version(registry, spec, info.model_uri, run.info.run_id, tags)
    registry.move_champion(spec.model_name, str(mv.version), reason="serving benchmark", actor="benchmark")
    print(
        f"registered HGB v{mv.version} on {len(train)} rows; scorer tag {tags['mlops.scorer']} "
        f"(max |diff| {tags.get('mlops.scorer_max_abs_diff')} on {tags.get('mlops.scorer_rows')} hold-out+probe rows)"
    )
    return str(mv.version)


def one_row(env: dict[str, str], spec_path: str) -> dict[str, Any]:
    """A real feature row from the deployment's store."""
    import duckdb

    from mlops_assets.config import Settings, load_spec
    from mlops_assets.storage.stores import duckdb_file

    settings = Settings.from_env(env)
    spec = load_spec(spec_path)
    con = duckdb.connect(str(duckdb_file(settings.data_dir, spec.name)), read_only=True)
    try:
        df = con.execute(f"SELECT {', '.join(spec.feature_names)} FROM features USING SAMPLE 1 ROWS").df()
    finally:
        con.close()
    row: dict[str, Any] = {}
    for k, v in df.iloc[0].to_dict().items():
        v = v.item() if hasattr(v, "item") else v
        row[k] = None if isinstance(v, float) and v != v else v
    return row


def make_deployment(days: int = 26) -> tuple[str, str]:
    """A flights deployment with a trained champion, made by the project's own replay."""
    import yaml

    from mlops_assets.config import DEFAULT_SPEC

    root = Path(tempfile.mkdtemp(prefix="serving-bench-data-"))
    spec = yaml.safe_load(DEFAULT_SPEC.read_text())
    spec["policy"]["bootstrap_min_rows"] = 18000
    spec["monitoring"]["evidently_every_days"] = 0
    path = root / "flights_bench.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    print(f"replaying {days} days of flights into {root} (policy.bootstrap_min_rows: 18000) ...", flush=True)
    env = {**os.environ, "MLOPS_DATA_DIR": str(root / "data")}
    env.pop("MLOPS_SPECS", None)
    subprocess.run(
        [str(BIN / "mlops-assets"), "replay", "--spec", str(path), "--days", str(days), "--no-compare", "--quiet"],
        env=env,
        cwd=root,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return str(root / "data"), str(path)


# --- servers and load --------------------------------------------------------------------------------------
def wait_http(port: int, path: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server on port {port} did not become ready in {seconds:.0f}s")


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def lua(path: Path, body: dict[str, Any], delay_ms: float | None = None) -> Path:
    text = f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[{json.dumps(body)}]]\n'
    if delay_ms:
        text += f"function delay()\n  return {delay_ms:.3f}\nend\n"
    path.write_text(text)
    return path


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pgid: int) -> float:
    """User + system CPU of every process in the server's process group (its workers included): what one
    request costs the machine, which a shared, noisy machine distorts far less than req/s."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of /proc/PID/stat: the process group
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def wrk(port: int, path: str, script: Path, conns: int, seconds: float, pgid: int | None = None) -> dict[str, float]:
    before = cpu_seconds(pgid) if pgid else 0.0
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(conns, 2)}",
            f"-c{conns}",
            f"-d{seconds:.0f}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    requests = float(total.group(1)) if total else 0.0
    cpu = cpu_seconds(pgid) - before if pgid else float("nan")
    return {
        "cpu_ms_per_request": cpu * 1e3 / requests if requests else float("nan"),
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50": latency("50"),
        "p99": latency("99"),
        "requests": requests,
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": float(sum(int(g) for g in sock.groups())) if sock else 0.0,
    }


# --- the swap run ------------------------------------------------------------------------------------------
def swap_run(
    env: dict[str, str], spec_path: str, port: int, script: Path, body: dict[str, Any], swaps: int, seconds: float
) -> dict[str, Any]:
    from mlops_assets.config import Settings, load_spec
    from mlops_assets.defs.resources import ModelRegistryResource

    settings = Settings.from_env(env).with_spec(spec_path)
    spec = load_spec(spec_path)
    registry = ModelRegistryResource(
        tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
    )
    champion = registry.champion_info(spec.model_name)
    assert champion is not None
    versions = [int(v.version) for v in registry.client.search_model_versions(f"name='{spec.model_name}'")]
    other = str(max(v for v in versions if str(v) != champion.version))
    targets = [other if i % 2 == 0 else champion.version for i in range(swaps)]
    result: dict[str, Any] = {}
    stop_checker = threading.Event()
    seen: dict[str, set[float]] = {}
    order: list[str] = []
    checker_failures: list[str] = []

    def checker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        payload = json.dumps(body)
        while not stop_checker.is_set():
            try:
                conn.request("POST", "/predict", payload, {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
            except OSError as exc:
                checker_failures.append(f"{type(exc).__name__}")
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            if r.status != 200:
                checker_failures.append(f"{r.status}")
                continue
            answer = json.loads(data)
            seen.setdefault(answer["model_version"], set()).add(round(answer["scores"][0], 12))
            if not order or order[-1] != answer["model_version"]:
                order.append(answer["model_version"])
            time.sleep(0.01)

    def load() -> None:
        result.update(wrk(port, "/predict", script, 8, seconds))

    threads = [threading.Thread(target=load), threading.Thread(target=checker)]
    for t in threads:
        t.start()
    moves = 0
    pause = seconds / (swaps + 1)
    for i, target in enumerate(targets):
        time.sleep(pause)
        kind = "promote" if i % 2 == 0 else "rollback"
        if registry.move_champion(
            spec.model_name, target, reason="swap under load", actor="benchmark", kind=kind
        ).moved:
            moves += 1
    threads[0].join()
    stop_checker.set()
    threads[1].join()
    registry.move_champion(spec.model_name, champion.version, reason="benchmark done", actor="benchmark")
    # every version answered with one score for the one row: scores and version names never mixed
    mixed = {v: len(s) for v, s in seen.items() if len(s) != 1}
    return {
        **result,
        "moves": moves,
        "versions_seen": sorted(seen),
        "switches_seen": len(order) - 1,
        "mixed": mixed,
        "checker_failures": checker_failures,
    }


# --- main --------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", help="a deployment with a champion (default: replay one into a temp folder)")
    ap.add_argument("--spec", help="its spec (required with --data-dir)")
    ap.add_argument("--fit-hgb", action="store_true", help="register and promote an HGB champion first")
    ap.add_argument("--seconds", type=float, default=10.0, help="each wrk run")
    ap.add_argument("--workers", type=int, default=2, help="processes of each server")
    ap.add_argument("--swaps", type=int, default=6)
    ap.add_argument("--port", type=int, default=8110, help="ours; mlflow's is the next one")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops both servers
    if not 8100 <= args.port <= 8198:
        raise SystemExit("ports 8100-8199 only")
    if args.data_dir is None:
        args.data_dir, args.spec = make_deployment()
        args.fit_hgb = True
    elif args.spec is None:
        raise SystemExit("--spec is required with --data-dir")
    env = {**os.environ, "MLOPS_DATA_DIR": str(Path(args.data_dir).resolve()), "MLOPS_SPEC": args.spec}
    env.pop("MLOPS_SPECS", None)
    env.pop("MLOPS_SERVE_TOKEN", None)
    os.environ.update({k: env[k] for k in ("MLOPS_DATA_DIR", "MLOPS_SPEC")})
    if args.fit_hgb:
        fit_hgb(env, args.spec)
    from mlops_assets.config import Settings, load_spec

    settings = Settings.from_env(env)
    spec = load_spec(args.spec)
    row = one_row(env, args.spec)
    ours_port, theirs_port = args.port, args.port + 1
    tmp = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    ours_lua = lua(tmp / "ours.lua", {"rows": [row]})
    theirs_lua = lua(tmp / "theirs.lua", {"dataframe_records": [row]})
    # mlflow runs `uvicorn` from PATH
    # One OpenMP thread per worker for both (ours sets it itself): scikit-learn's threads spinning against
    # the other workers would make mlflow look slower than it is.
    mlflow_env = {
        **env,
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "PATH": f"{BIN}:{env['PATH']}",
        "OMP_NUM_THREADS": "1",
    }
    ours = start(
        [
            str(BIN / "mlops-assets"),
            "serve",
            "--spec",
            args.spec,
            "--port",
            str(ours_port),
            "--workers",
            str(args.workers),
            "--poll-seconds",
            "1",
        ],
        env,
        tmp / "ours.log",
    )
    theirs = start(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{spec.model_name}@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(theirs_port),
            "-w",
            str(args.workers),
        ],
        mlflow_env,
        tmp / "mlflow.log",
    )
    try:
        wait_http(ours_port, "/health", 600)
        wait_http(theirs_port, "/ping", 600)
        model = json.loads(_get(ours_port, "/model"))
        print(
            f"champion v{model['version']} ({model['tags'].get('mlops.family', '?')}); ours scores by the "
            f"{model['scorer']} path: {model['scorer_note']}"
        )
        check_same_scores(ours_port, theirs_port, row)
        for port, script in ((ours_port, ours_lua), (theirs_port, theirs_lua)):  # warm both up
            wrk(port, "/invocations" if port == theirs_port else "/predict", script, 2, 2)
        results: dict[tuple[str, int], dict[str, float]] = {}
        for conns in (1, 8):
            results[("ours", conns)] = wrk(ours_port, "/predict", ours_lua, conns, args.seconds, ours.pid)
            results[("mlflow", conns)] = wrk(theirs_port, "/invocations", theirs_lua, conns, args.seconds, theirs.pid)
        peak = results[("ours", 8)]["rps"]
        half_lua = lua(tmp / "half.lua", {"rows": [row]}, delay_ms=8 * 1000.0 / (peak / 2))
        results[("ours half peak", 8)] = wrk(ours_port, "/predict", half_lua, 8, args.seconds, ours.pid)
        report(results, args.workers)
        swap = swap_run(env, args.spec, ours_port, ours_lua, {"rows": [row]}, args.swaps, max(args.seconds, 20.0))
        print(
            f"\nswap under load: {swap['moves']} alias moves (promotions and rollbacks) during "
            f"{swap['requests']:.0f} requests at 8 connections ({swap['rps']:.0f} req/s, p99 {swap['p99']:.2f} ms): "
            f"{swap['non2xx']:.0f} non-2xx, {swap['socket_errors']:.0f} socket errors; checker saw versions "
            f"{swap['versions_seen']} and {swap['switches_seen']} switches of the serving version, "
            f"{len(swap['checker_failures'])} failures, versions with mixed scores: "
            f"{swap['mixed'] or 'none'}"
        )
    finally:
        stop(ours)
        stop(theirs)


def _get(port: int, path: str) -> str:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path)
    return c.getresponse().read().decode()


def _post(port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read().decode()
    if r.status != 200:
        raise SystemExit(f"{path} on {port}: {r.status} {data[:300]}")
    return dict(json.loads(data))


def check_same_scores(ours: int, theirs: int, row: dict[str, Any]) -> None:
    a = _post(ours, "/predict", {"rows": [row]})["scores"][0]
    b = _post(theirs, "/invocations", {"dataframe_records": [row]})["predictions"][0]
    # mlflow's pyfunc answers `predict` (the class); ours the probability: compare the decision at 0.5
    print(f"same row: ours P(1)={a:.6f}; mlflow predict={b} (class at 0.5: {int(a >= 0.5)})")


def report(results: dict[tuple[str, int], dict[str, float]], workers: int) -> None:
    print(f"\n{'server':<26}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'CPU ms/req':>12}")
    for (name, conns), r in results.items():
        label = f"{name} ({workers}w)" if name != "ours half peak" else f"ours at half peak ({workers}w)"
        print(
            f"{label:<26}{conns:>6}{r['rps']:>10.1f}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['non2xx']:>9.0f}"
            f"{r['cpu_ms_per_request']:>12.3f}"
        )
    print("\nratios ours / mlflow models serve (same model, same row, same workers):")
    for conns in (1, 8):
        o, m = results[("ours", conns)], results[("mlflow", conns)]
        print(
            f"  {conns} conn: throughput {o['rps'] / max(m['rps'], 1e-9):.1f}x, p50 {o['p50'] / m['p50']:.3f}x, "
            f"p99 {o['p99'] / m['p99']:.3f}x, "
            f"server CPU per request {o['cpu_ms_per_request'] / m['cpu_ms_per_request']:.3f}x"
        )
    half = results[("ours half peak", 8)]
    ratio8 = results[("ours", 8)]["rps"] / max(results[("mlflow", 8)]["rps"], 1e-9)
    print(
        f"goals: 8-conn throughput >= 10x mlflow: {ratio8:.1f}x; "
        f"p99 at 1 conn <= 5 ms: {results[('ours', 1)]['p99']:.2f} ms; "
        f"p99 at half our peak ({half['rps']:.0f} req/s) <= 10 ms: {half['p99']:.2f} ms"
    )


if __name__ == "__main__":
    main()
