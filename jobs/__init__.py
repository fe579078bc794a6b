"""The work: engines, destinations, the backup pipeline, retention and cleanup.

Nothing in here imports `worker` (the process: CLI, config, scheduler); dependencies point one way.
"""
