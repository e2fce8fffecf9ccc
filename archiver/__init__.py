"""archiver: backups, cold-tier archives and restore drills for side-by-side PostgreSQL databases."""

__version__ = "0.1.0"
