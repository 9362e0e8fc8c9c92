"""The shard partitions: one key per ``shard_size`` rows of a manifest, added by the manifest sensor."""

import dagster as dg

video_shards = dg.DynamicPartitionsDefinition(name="video_shards")
