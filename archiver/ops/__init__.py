"""Operating all policies over time: the worker (schedules), status overviews, the demo."""
