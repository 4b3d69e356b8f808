"""The online side of the feature store in Redis: each entity's newest feature row, by key.

The offline store (Parquet partitions, `ParquetFeatureStore`) is written by many workers, one day each, in
any order: a backfill writes old days after new ones, and a corrected day is written again later. The online
copy must still end at each entity's newest row, as Feast splits an offline from an online store. So every
write is a compare-and-set in Redis itself (one Lua script, atomic on the server), never a read in Python
followed by a write that another worker may have overtaken:

- a row replaces the stored one only if it is at least as new (an older day written late never overwrites
  a newer row), or if the stored row came from the very partition being rewritten (a corrected day may move
  an entity's newest row earlier);
- an entity withdrawn from a rewritten day falls back to its newest row elsewhere in the history, or is
  removed, but only if the stored row is still the withdrawn day's.

One hash per entity under `<prefix>:<dataset>:online:<entity_id>`: `t` (the row's event time in
microseconds, compared), `d` (its partition day), `row` (the row as JSON, typed back on read). Keys are
namespaced by dataset, so datasets side by side in one Redis never meet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import pandas as pd
import redis

from mlops_assets.config import DatasetSpec
from mlops_assets.storage.feature_sql import typed_rows

# KEYS: the entities' keys. ARGV[1]: the partition day being rewritten ('' for none); then for each key its
# candidate row's event time (microseconds), partition day and JSON ('' removes the key).
_COMPARE_AND_SET = """
local rewritten = ARGV[1]
local changed = 0
for i, key in ipairs(KEYS) do
  local t = ARGV[3 * i - 1]
  local d = ARGV[3 * i]
  local row = ARGV[3 * i + 1]
  local cur = redis.call('HMGET', key, 't', 'd')
  local take
  if not cur[1] then
    take = row ~= ''
  else
    take = (rewritten ~= '' and cur[2] == rewritten) or (tonumber(cur[1]) <= tonumber(t))
  end
  if take then
    if row == '' then
      redis.call('DEL', key)
    else
      redis.call('HSET', key, 't', t, 'd', d, 'row', row)
    end
    changed = changed + 1
  end
end
return changed
"""
BATCH = 500  # keys per script call: one round trip each, short enough not to stall the server


@dataclass(frozen=True)
class OnlineRow:
    """A feature row as the online store keeps it."""

    entity_id: str
    event_us: int  # event time, microseconds since the epoch: what "newer" compares
    day: str  # the partition (ISO day) the row was written with
    row: str  # the row as JSON (`feature_sql.encode_row`)


class RedisOnlineStore:
    """Each entity's newest feature row of one dataset, in Redis (see the module)."""

    def __init__(self, client: redis.Redis, spec: DatasetSpec, prefix: str = "mlops") -> None:
        self.client = client
        self.spec = spec
        self.namespace = f"{prefix}:{spec.name}:online:"
        self._cas = client.register_script(_COMPARE_AND_SET)

    @classmethod
    def from_url(cls, url: str, spec: DatasetSpec, prefix: str = "mlops") -> RedisOnlineStore:
        """`url` as redis-py reads it, e.g. `redis://127.0.0.1:6379/0`."""
        return cls(redis.Redis.from_url(url), spec, prefix)

    def key(self, entity_id: str) -> str:
        return self.namespace + entity_id

    def _apply(self, rewritten: str, items: list[tuple[str, str, str, str]]) -> int:
        changed = 0
        for i in range(0, len(items), BATCH):
            chunk = items[i : i + BATCH]
            args: list[Any] = [rewritten]
            for _, t, d, row in chunk:
                args += [t, d, row]
            changed += int(self._cas(keys=[self.key(c[0]) for c in chunk], args=args))
        return changed

    def publish(self, rewritten_day: Any, rows: list[OnlineRow]) -> int:
        """Offer each entity's newest row of the partition `rewritten_day` (a date, or None for rows not from
        one rewrite, e.g. a resync); each is taken if at least as new as the stored one, or if the stored one
        came from that same partition. Returns how many were taken."""
        rewritten = rewritten_day.isoformat() if rewritten_day is not None else ""
        return self._apply(rewritten, [(r.entity_id, str(r.event_us), r.day, r.row) for r in rows])

    def withdraw(self, rewritten_day: Any, entity_ids: set[str], fallback: list[OnlineRow]) -> int:
        """Entities that the new version of `rewritten_day` no longer has: where the stored row is still that
        day's, it becomes the entity's newest row elsewhere (`fallback`), or is removed if there is none."""
        by_entity = {r.entity_id: r for r in fallback}
        items = []
        for entity in sorted(entity_ids):
            r = by_entity.get(entity)
            items.append((entity, str(r.event_us), r.day, r.row) if r else (entity, "-1", "", ""))
        return self._apply(rewritten_day.isoformat(), items)

    def online_features(self, entity_ids: list[str]) -> pd.DataFrame:
        """The newest row of each known entity among `entity_ids` (each once), typed exactly as
        `FeatureStore.online_features` returns them."""
        unique = list(dict.fromkeys(entity_ids))
        pipe = self.client.pipeline(transaction=False)
        for entity in unique:
            pipe.hget(self.key(entity), "row")
        found = [json.loads(raw) for raw in pipe.execute() if raw is not None]
        return typed_rows(self.spec, found)

    def clear(self) -> int:
        """Remove every key of this dataset (a rebuild, or a test's clean-up). Returns how many."""
        removed = 0
        batch: list[Any] = []
        for key in self.client.scan_iter(match=self.namespace + "*", count=1000):
            batch.append(key)
            if len(batch) >= BATCH:
                removed += cast(int, self.client.delete(*batch))
                batch = []
        if batch:
            removed += cast(int, self.client.delete(*batch))
        return removed
