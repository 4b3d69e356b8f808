"""The Dagster UI, driven in Debian's Chromium: what a user opens after `make demo` and `make ui`."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlops_assets.config import Settings
from mlops_assets.replay import replay

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def webserver(flights_settings: Settings, tmp_path: Path) -> Iterator[str]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    replay(flights_settings.spec_path, flights_settings, start=dt.date(2013, 1, 1), end=dt.date(2013, 1, 3))
    port = _free_port()
    log = (tmp_path / "webserver.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster_webserver",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            "mlops_assets.definitions",
        ],
        env={**os.environ},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/server_info", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "webserver.log").read_text()[-3000:]) from None
            time.sleep(1)
    else:
        proc.terminate()
        raise RuntimeError("dagster-webserver did not answer within 120 s")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_ui_shows_the_graph_the_reports_and_the_sensor(webserver: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        page = browser.new_page(viewport={"width": 1500, "height": 1000})

        # every asset is listed under its dataset's key prefix
        page.goto(f"{webserver}/assets", wait_until="domcontentloaded")
        expect(page.get_by_text("flights / raw_batches", exact=True).first).to_be_visible(timeout=60_000)
        skip = page.get_by_role("button", name="Skip")  # the first-visit community dialog
        if skip.count():
            skip.first.click()
        for name in ("features", "drift_report", "performance_report", "champion", "batch_predictions"):
            expect(page.get_by_text(f"flights / {name}", exact=True).first).to_be_visible()
        expect(page.get_by_text("365 partitions").first).to_be_visible()
        page.screenshot(path=str(tmp_path / "catalog.png"))

        page.goto(f"{webserver}/asset-groups", wait_until="domcontentloaded")
        for group in ("ingestion", "features", "monitoring", "training", "registry", "serving"):
            expect(page.get_by_text(group, exact=True).first).to_be_visible(timeout=60_000)

        page.goto(f"{webserver}/assets/flights/drift_report?view=events", wait_until="domcontentloaded")
        expect(page.get_by_text("drift_share").first).to_be_visible(timeout=60_000)
        page.screenshot(path=str(tmp_path / "drift_report.png"))

        page.goto(f"{webserver}/automation", wait_until="domcontentloaded")
        for name in (
            "flights__retrain_sensor",
            "flights__daily_monitoring_schedule",
            "flights__weekly_retrain_schedule",
        ):
            expect(page.get_by_text(name).first).to_be_visible(timeout=60_000)
        browser.close()
    assert (tmp_path / "catalog.png").stat().st_size > 10_000
