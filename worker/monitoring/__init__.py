"""Monitoring by concern, as borgmatic's `hooks/monitoring/`: what people are told and what they can ask.

- `notifications.py`: what a run is told as (the sentence, the webhook's JSON) and the webhook itself;
- `pings.py`: the dead-man's-switch pings (HEALTHCHECK_PING_URL, healthchecks.io style);
- `delivery.py`: how a message reaches its receiver, from a background thread, never holding a job up;
- `dispatch.py`: `watching`, which hands each run event to the concerns above and to the disk check;
- `disk.py`: how full the backup volume is, and its warning;
- `freshness.py`: how old each configured set's newest sound backup is, on the volume and in the bucket;
- `status.py`: the one status model that `status`, `/healthz` and `/metrics` render.
"""
