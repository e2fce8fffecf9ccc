"""PostgreSQL: the only package that imports the database drivers (psycopg 3, ADBC).

The rest of archiver asks these modules for connections, catalog facts, snapshots and locks, and
never sees a driver type.
"""
