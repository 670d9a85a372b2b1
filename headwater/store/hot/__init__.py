"""The hot tier: the latest row per key and the recent rows of keyed tables, as Arrow in Ray actors sharded by
key; a cache of the warm tier, rebuilt from it after a restart (docs/storage.md, "Hot"). Ray is imported only
when a shard is reached, so the store works without it (look-ups then read warm)."""

from headwater.store.hot.shard import ABSENT, MISS, HotLimits, HotShardState
from headwater.store.hot.tier import NAMESPACE, HotConfig, HotShard, HotTier, shard_of, split_by_shard

__all__ = ["ABSENT", "MISS", "NAMESPACE", "HotConfig", "HotLimits", "HotShard", "HotShardState", "HotTier",
           "shard_of", "split_by_shard"]
