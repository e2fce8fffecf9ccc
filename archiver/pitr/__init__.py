"""Point-in-time recovery: base backups (pg_basebackup), the WAL archive (push, fetch, receive), the
recoverable window, restores to a point in time and their retention."""
