"""Row rules a ranking spec adds: an interaction must name a user and an item its side tables know.

An interaction with a film the catalogue does not list cannot be recommended, explained or joined to its
attributes; one by a user the register does not know is the same kind of delivery error. Such rows are
quarantined with the reason, like any other rule's. The side tables are read once per process (a file
shipped in a package or dropped in a folder; they change far less often than the interactions).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import pandas as pd

from mlops_assets.config import DatasetSpec, SourceSpec


@lru_cache(maxsize=8)
def _known(source: SourceSpec, column: str) -> frozenset[str]:
    from mlops_assets.datasets.sources import read_table

    table = read_table(source)
    if column not in table.columns:
        raise ValueError(f"{source.path}: the side table has no column {column!r} to check interactions against")
    return frozenset(table[column].dropna().astype(str))


def catalogue_rules(spec: DatasetSpec, typed: pd.DataFrame) -> Iterator[tuple[np.ndarray, str]]:
    """(rows breaking the rule, the reason) for each side table a ranking spec names."""
    if spec.ranking is None:
        return
    lookups = {lk.name: lk for lk in spec.features.lookups}
    for role, col in (("items", spec.ranking.item), ("users", spec.ranking.user)):
        name = getattr(spec.ranking, role)
        if name is None or col not in typed:
            continue
        lk = lookups[name]
        known = _known(lk.source, lk.keys[col])
        values = typed[col]
        bad = values.notna() & ~values.astype(str).isin(known)
        yield bad.to_numpy(), f"{col}: not in the {name} table (rule: ranking.{role} lists every known {col})"
