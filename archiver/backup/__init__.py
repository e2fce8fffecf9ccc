"""Backups: the dump pipeline, globals, backup manifests, rotation (prune) and the backup task."""
