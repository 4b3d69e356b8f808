"""RecBole's "atomic files" (`.inter`, `.item`, `.user`): how the `recbole` wheel ships MovieLens 100K.

A tab-separated text file whose header names each column with its RecBole type (`user_id:token`,
`rating:float`, `movie_title:token_seq`). The type suffix is dropped, so a spec names plain columns
(`user_id`, `rating`); values are read as text and typed by the spec's schema like any CSV. Quoting is off:
titles contain quote characters that are part of the title, never delimiters.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

ATOMIC_SUFFIXES = (".inter", ".item", ".user")


def is_atomic(path: Path) -> bool:
    return path.name.lower().endswith(ATOMIC_SUFFIXES)


def read_atomic(path: Path) -> pd.DataFrame:
    """The whole file as a frame of plain column names; numeric columns as numbers, tokens as text."""
    frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False, na_values=[""])
    types = {}
    renamed = {}
    for col in frame.columns:
        name, _, kind = col.partition(":")
        renamed[col] = name
        types[name] = kind
    frame = frame.rename(columns=renamed)
    for name, kind in types.items():
        if kind == "float":
            frame[name] = pd.to_numeric(frame[name], errors="coerce")
    return frame
