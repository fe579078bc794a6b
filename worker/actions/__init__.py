"""One module per verb of the command line (`backup`, `list` in listing.py, `verify`, `restore`, `prune`,
`cleanup`, `status`, `config`, `history`, `run`): `ls worker/actions` is the list of verbs.

Each `cmd_<verb>` function returns the process exit code; jobs run inside `run_job` so that every run is logged
and recorded. What the verbs share lives outside this package: `worker/context.py` (configuration, catalog,
destinations, the backup sets), `worker/output.py` (how results are shown: sentences or JSON on stdout, never log
lines), `worker/selection.py` (which set and backup a verb works on), `worker/purge.py` (table retention) and
`worker/recover.py` (restore at start, for `run`).
"""
