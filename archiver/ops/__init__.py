"""Operating tasks: the runner (locks, run record, metrics, notifications around every run), a task's locks,
the worker (schedules, /metrics), status overviews, metrics, notifications and the demo.
"""
