# Runs once, on an empty data directory (sourced by the image's entrypoint): replication connections
# from other containers, for the app policy's point-in-time recovery (pg_basebackup, pg_receivewal).
# "all" in the database column does not match replication connections: they need this line.
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
