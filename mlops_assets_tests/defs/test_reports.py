"""Reports and plots go to the lake, local or S3, and the metadata opens them from a browser."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import boto3
import pandas as pd

from mlops_assets.defs.reports import publish
from mlops_assets.ml.plots import drift_over_time
from mlops_assets.storage.lake import Lake, LocalBackend, S3Backend
from mlops_assets_tests.services import s3_server


def history() -> pd.DataFrame:
    days = pd.date_range("2013-01-01", periods=10)
    return pd.DataFrame(
        {
            "day": list(days) * 2,
            "column": ["a"] * 10 + ["b"] * 10,
            "statistic": [0.1 * i for i in range(20)],
            "drifted": [i % 3 == 0 for i in range(20)],
            "drift_share": [0.5] * 20,
            "stattest": ["psi"] * 20,
        }
    )


def test_a_plot_is_kept_on_a_local_lake_linked_and_shown_inline(tmp_path: Path) -> None:
    lake = Lake(LocalBackend(tmp_path / "lake"))
    meta = publish(
        lake,
        "flights",
        "drift_over_time",
        "drift_2013-01-10.png",
        lambda p: drift_over_time(history(), p, threshold=0.5),
    )
    kept = tmp_path / "lake" / "reports" / "flights" / "drift_over_time" / "drift_2013-01-10.png"
    assert kept.read_bytes()[:4] == b"\x89PNG"
    assert meta["drift_over_time"].value == kept.resolve().as_uri()
    assert meta["drift_over_time_uri"].value == str(kept)
    assert str(meta["drift_over_time_plot"].value).startswith("![drift_over_time](data:image/png;base64,")
    # a re-materialized day replaces its own report, it does not pile up
    publish(lake, "flights", "drift_over_time", "drift_2013-01-10.png", lambda p: p.write_bytes(b"\x89PNG again"))
    assert kept.read_bytes() == b"\x89PNG again"


def test_a_report_on_s3_opens_through_its_link_without_credentials(tmp_path: Path) -> None:
    with s3_server() as endpoint:
        client = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
        )
        client.create_bucket(Bucket="lake")
        lake = Lake(S3Backend(client, "lake", "prod"))
        html = "<html><body>drift</body></html>"
        meta = publish(lake, "chicago", "evidently_report", "d.html", lambda p: p.write_text(html))
        assert meta["evidently_report_uri"].value == "s3://lake/prod/reports/chicago/evidently_report/d.html"
        assert "evidently_report_plot" not in meta
        with urllib.request.urlopen(str(meta["evidently_report"].value), timeout=10) as resp:
            assert resp.read().decode() == html
