"""Reports and plots for people, rendered where the step runs and kept on the lake (S3 in production), so a
report outlives the worker that made it and the UI links to the lake, never to one machine's disk."""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from mlops_assets.storage.lake import Lake

# A plot is shown inline in the UI when it is this small or smaller (the event log keeps it); larger ones are
# only linked.
INLINE_PLOT_BYTES = 200_000


def publish(
    lake: Lake, dataset: str, kind: str, name: str, render: Callable[[Path], Any]
) -> dict[str, dg.MetadataValue]:
    """Render into a scratch file with `render(path)`, keep the bytes on the lake, and return the metadata
    that opens it: `<kind>` (a link a browser opens), `<kind>_uri` (the lake's permanent address) and, for a
    plot, `<kind>_plot` (the image inline, so the trend is seen on the asset's page)."""
    with tempfile.TemporaryDirectory(prefix="mlops-report-") as tmp:
        path = Path(tmp) / name
        render(path)
        data = path.read_bytes()
    key = lake.write_report(dataset, kind, name, data)
    meta: dict[str, dg.MetadataValue] = {
        kind: dg.MetadataValue.url(lake.link(key)),
        f"{kind}_uri": dg.MetadataValue.path(lake.uri(key)),
    }
    if name.endswith(".png") and len(data) <= INLINE_PLOT_BYTES:
        b64 = base64.b64encode(data).decode()
        meta[f"{kind}_plot"] = dg.MetadataValue.md(f"![{kind}](data:image/png;base64,{b64})")
    return meta
