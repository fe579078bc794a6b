# The PostgreSQL and Redis servers of a test run, for ./dev test (sourced by ./dev, not run on its own).
#
# test_servers decides, before pytest starts, which servers the suite talks to:
#   - a server that answers at the configured place (TEST_PG_HOST/TEST_PG_PORT/TEST_PG_USER, default
#     127.0.0.1:5432, letting user postgres in without a password; TEST_REDIS_HOST/TEST_REDIS_PORT, default
#     127.0.0.1:6379, answering PING) is used as it is;
#   - when none does at the default place (the host and port variables unset), a private throwaway server is
#     started on a free loopback port under a temporary directory and the variables are exported for pytest;
#   - when the variables point somewhere and nothing answers there, the run stops (exit 3) and says so.
# stop_private_servers stops what test_servers started and removes its directories; ./dev runs it on exit.

# What was started (set by start_private_*, read by stop_private_servers); no subshells, so these stick.
PRIVATE_PG_DIR="" PRIVATE_PG_PORT="" PRIVATE_REDIS_DIR="" PRIVATE_REDIS_PORT=""

pg_bindir() {
  # The directory holding initdb and pg_ctl (Debian keeps them out of PATH, under /usr/lib/postgresql/N/bin).
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1) || true
  if [ -n "$found" ] && [ -x "$found/initdb" ]; then echo "$found"; return; fi
  found=$(command -v initdb) || return 1
  dirname "$found"
}

free_port() {
  .venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

now_ms() {
  local now=${EPOCHREALTIME/[.,]/}
  echo $((now / 1000))
}

seconds_since() {
  # "1.30 s" since the now_ms value $1.
  local ms=$(( $(now_ms) - $1 ))
  printf '%d.%02d s' $((ms / 1000)) $((ms % 1000 / 10))
}

pg_refusal() {
  # Prints nothing and succeeds when PostgreSQL at $1:$2 lets user $3 in without a password; else prints why not.
  local output
  output=$(PGCONNECT_TIMEOUT=3 psql -X -w -At -h "$1" -p "$2" -U "$3" -d postgres -c 'SELECT 1' 2>&1) && return 0
  output=${output%%$'\n'*}
  echo "${output##*failed: }"
  return 1
}

redis_refusal() {
  # Prints nothing and succeeds when Redis at $1:$2 answers PING; else prints why not.
  local output
  output=$(timeout 5 redis-cli -h "$1" -p "$2" ping 2>&1)
  [ "$output" = PONG ] && return 0
  echo "${output:-no answer}" | head -n 1
  return 1
}

as_postgres() {
  # initdb and the server refuse to run as root: as root, run them as the postgres user (the postgresql package
  # creates it).
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_private_pg() {
  # initdb into a temporary directory (trust authentication, superuser $1), start it on a free port on
  # 127.0.0.1 with its socket in the same directory (fsync off: nothing in it outlives the run).
  local user=$1 bindir dir port
  bindir=$(pg_bindir) || { echo "dev: initdb not found; install the postgresql package" >&2; exit 2; }
  dir=$(mktemp -d "${TMPDIR:-/tmp}/bw-test-pg.XXXXXX")
  PRIVATE_PG_DIR=$dir
  if [ "$(id -u)" = 0 ]; then
    if ! id postgres >/dev/null 2>&1; then
      echo "dev: initdb refuses root and there is no postgres user to run it as; install the postgresql package" >&2
      exit 2
    fi
    chown postgres:postgres "$dir"
  fi
  if ! as_postgres "$bindir/initdb" -D "$dir/data" -U "$user" --auth=trust -E UTF8 --locale=C --no-sync \
      --no-instructions >"$dir/initdb.log" 2>&1; then
    echo "dev: initdb of the private PostgreSQL failed:" >&2; tail -n 5 "$dir/initdb.log" >&2; exit 3
  fi
  port=$(free_port)
  if ! as_postgres "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o \
      "-p $port -k '$dir' -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null 2>&1; then
    echo "dev: the private PostgreSQL did not start:" >&2; tail -n 5 "$dir/server.log" >&2; exit 3
  fi
  PRIVATE_PG_PORT=$port
}

start_private_redis() {
  # redis-server on a free port on 127.0.0.1, nothing saved to disk, daemonized in its own session (so a
  # Ctrl-C in the terminal reaches pytest, not the server).
  local dir port
  dir=$(mktemp -d "${TMPDIR:-/tmp}/bw-test-redis.XXXXXX")
  PRIVATE_REDIS_DIR=$dir
  port=$(free_port)
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null
  for _ in $(seq 100); do
    redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG && { PRIVATE_REDIS_PORT=$port; return; }
    sleep 0.1
  done
  echo "dev: the private Redis did not start:" >&2; tail -n 5 "$dir/redis.log" >&2; exit 3
}

stop_private_servers() {
  # Stop the private servers (if any) and remove their directories; safe to call more than once.
  if [ -n "$PRIVATE_PG_DIR" ]; then
    if [ -f "$PRIVATE_PG_DIR/data/postmaster.pid" ]; then
      as_postgres "$(pg_bindir)/pg_ctl" -D "$PRIVATE_PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$PRIVATE_PG_DIR"
    PRIVATE_PG_DIR=""
  fi
  if [ -n "$PRIVATE_REDIS_DIR" ]; then
    local pid
    pid=$(cat "$PRIVATE_REDIS_DIR/redis.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -rf "$PRIVATE_REDIS_DIR"
    PRIVATE_REDIS_DIR=""
  fi
}

test_servers() {
  # Choose (or start) the servers, export TEST_PG_* and TEST_REDIS_* for pytest, and say which are used.
  local pg_host=${TEST_PG_HOST:-127.0.0.1} pg_port=${TEST_PG_PORT:-5432} pg_user=${TEST_PG_USER:-postgres}
  local redis_host=${TEST_REDIS_HOST:-127.0.0.1} redis_port=${TEST_REDIS_PORT:-6379}
  local why pg_used redis_used began

  if why=$(pg_refusal "$pg_host" "$pg_port" "$pg_user"); then
    pg_used="PostgreSQL at $pg_host:$pg_port (already running)"
  elif [ -n "${TEST_PG_HOST:-}${TEST_PG_PORT:-}" ]; then
    echo "dev: TEST_PG_HOST/TEST_PG_PORT point to PostgreSQL at $pg_host:$pg_port, which does not let user $pg_user" \
      "in: $why; start it there, or unset them to let ./dev test start a private server" >&2
    exit 3
  else
    echo "dev: no PostgreSQL lets user $pg_user in at $pg_host:$pg_port ($why); starting a private one" >&2
    began=$(now_ms)
    start_private_pg "$pg_user"
    pg_host=127.0.0.1 pg_port=$PRIVATE_PG_PORT
    pg_used="a private PostgreSQL at $pg_host:$pg_port (started in $(seconds_since "$began"))"
  fi

  if why=$(redis_refusal "$redis_host" "$redis_port"); then
    redis_used="Redis at $redis_host:$redis_port (already running)"
  elif [ -n "${TEST_REDIS_HOST:-}${TEST_REDIS_PORT:-}" ]; then
    echo "dev: TEST_REDIS_HOST/TEST_REDIS_PORT point to Redis at $redis_host:$redis_port, which does not answer" \
      "PING: $why; start it there, or unset them to let ./dev test start a private server" >&2
    exit 3
  else
    echo "dev: no Redis answers at $redis_host:$redis_port ($why); starting a private one" >&2
    began=$(now_ms)
    start_private_redis
    redis_host=127.0.0.1 redis_port=$PRIVATE_REDIS_PORT
    redis_used="a private Redis at $redis_host:$redis_port (started in $(seconds_since "$began"))"
  fi

  export TEST_PG_HOST=$pg_host TEST_PG_PORT=$pg_port TEST_PG_USER=$pg_user
  export TEST_REDIS_HOST=$redis_host TEST_REDIS_PORT=$redis_port
  echo "dev: tests use $pg_used and $redis_used" >&2
  if [ -n "$PRIVATE_PG_DIR$PRIVATE_REDIS_DIR" ]; then
    echo "dev: the private servers are stopped and their directories removed when the run ends" >&2
  fi
}
