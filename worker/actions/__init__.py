"""One module per verb (`backup`, `list`, `verify`, `restore`, `prune`, `cleanup`, `status`, `config`).

Each `cmd_*` function returns the process exit code; jobs run inside `run_job` so that every run is logged and
recorded. `context.py` holds what every verb shares (configuration, catalog, destinations, the backup sets),
`output.py` how results are shown: sentences or JSON on stdout, never log lines.
"""
