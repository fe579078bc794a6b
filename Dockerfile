# The worker as its own service, for PostgreSQL and Redis sources (docs/deploy-database-service.md).
# Railway builds this file whenever it finds it at the root of the repository a service deploys from.
# SQLite apps do not use it: they install the worker into the app itself (docs/deploy-sqlite-app.md).
#
# Why a Dockerfile and not Railpack's apt packages: RAILPACK_DEPLOY_APT_PACKAGES installs from the runtime
# image's Debian release (bookworm: PostgreSQL 15 client only), and pg_dump refuses a server of a newer major.
# Here the client comes from the PostgreSQL project's own apt repository (PGDG), which has every major.
FROM python:3.11-slim-bookworm

# The pg_dump/pg_restore majors to install, space-separated. The worker picks the one that matches the server,
# or the nearest newer one (from /usr/lib/postgresql/*/bin), and a newer client dumps every older server, so one
# major as new as your server's is enough. Set the service variable PG_MAJOR to change it: Railway passes
# service variables to the build as arguments. Empty ("") installs no PostgreSQL client (Redis-only workers).
ARG PG_MAJOR=17
RUN set -eux; \
    if [ -n "$PG_MAJOR" ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends ca-certificates postgresql-common; \
        /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y; \
        apt-get install -y --no-install-recommends $(for major in $PG_MAJOR; do echo "postgresql-client-$major"; done); \
        rm -rf /var/lib/apt/lists/*; \
        for major in $PG_MAJOR; do "/usr/lib/postgresql/$major/bin/pg_dump" --version; done; \
    fi

# redis-server: a Redis set's restore drill (DRILL_SCHEDULE, `drill`) loads the backup's RDB into a private
# redis-server on a loopback port (docs/drills.md); the worker never runs it otherwise.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends redis-server; \
    rm -rf /var/lib/apt/lists/*; \
    redis-server --version

WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY jobs ./jobs
RUN pip install --no-cache-dir . && backup-worker --version

# Exec form: the worker is PID 1 and receives Railway's SIGTERM itself (railway.toml sets the drain time).
CMD ["backup-worker", "run"]
