"""The cold tier: ranges (chunks, partitions) exported to Parquet, verified, dropped, expired, rehydrated."""
