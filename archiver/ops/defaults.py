"""Defaults that the command line, the worker and ``render kubernetes`` share, in a module that imports nothing.

METRICS_PORT: the worker's /metrics and /healthz. Not 9187 (postgres_exporter's, which CloudNativePG
also uses): 9100-9999, Prometheus' range of exporter ports, is taken in full; 10187 is outside it and
not used by the exporters listed beside it (it is not registered there yet).
"""

METRICS_PORT = 10187
