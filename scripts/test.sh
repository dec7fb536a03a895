#!/usr/bin/env bash
# The whole test suite on a fresh machine: venv + pinned installs, Redis, PostgreSQL, lint, pytest.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'

# Chromium for the compliance console's browser tests (Playwright drives Debian's build;
# Playwright's own browser download is not used).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing Debian's chromium for the console's browser tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "test.sh: FAILED: /usr/bin/chromium is needed (as root: apt-get install chromium chromium-driver)" >&2
    exit 1
  fi
fi

cleanups=()
cleanup() { for c in "${cleanups[@]}"; do eval "$c"; done; }
trap cleanup EXIT

# Redis: use the one at XACTHUC_TEST_REDIS_URL (default 127.0.0.1:6379), or start one.
export XACTHUC_TEST_REDIS_URL=${XACTHUC_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}
redis_up() { .venv/bin/python -c "import redis,sys; redis.Redis.from_url(sys.argv[1], socket_timeout=2).ping()" "$1" 2>/dev/null; }
if ! redis_up "$XACTHUC_TEST_REDIS_URL"; then
  if command -v redis-server >/dev/null; then
    dir=$(mktemp -d)
    port=${XACTHUC_TEST_REDIS_PORT:-6390}
    echo "test.sh: no Redis at $XACTHUC_TEST_REDIS_URL; starting redis-server on 127.0.0.1:$port"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
      --dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid"
    cleanups+=("kill \"\$(cat '$dir/redis.pid' 2>/dev/null)\" 2>/dev/null || true")
    export XACTHUC_TEST_REDIS_URL="redis://127.0.0.1:$port/0"
    for _ in $(seq 50); do redis_up "$XACTHUC_TEST_REDIS_URL" && break; sleep 0.1; done
  fi
  redis_up "$XACTHUC_TEST_REDIS_URL" || {
    echo "test.sh: FAILED: Redis is required (none at $XACTHUC_TEST_REDIS_URL and redis-server is not installed: apt-get install redis-server)" >&2
    exit 1
  }
fi

# Redis Cluster (issue 11): the one at XACTHUC_TEST_REDIS_CLUSTER_URL (redis+cluster://host:port,...),
# or 3 masters started here on free ports (cluster-enabled redis-server in a temp dir,
# `redis-cli --cluster create`, ready at cluster_state:ok), stopped on exit: tests/local_cluster.py.
if [ -z "${XACTHUC_TEST_REDIS_CLUSTER_URL:-}" ]; then
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "test.sh: FAILED: a Redis Cluster is required (set XACTHUC_TEST_REDIS_CLUSTER_URL, or install redis-server and redis-cli to start one here)" >&2
    exit 1
  fi
  cluster_dir=$(mktemp -d)
  cleanups+=(".venv/bin/python -m tests.local_cluster stop '$cluster_dir'")
  echo "test.sh: starting a 3-master Redis Cluster"
  if ! XACTHUC_TEST_REDIS_CLUSTER_URL=$(.venv/bin/python -m tests.local_cluster start "$cluster_dir"); then
    echo "test.sh: FAILED: the Redis Cluster did not start (logs were in $cluster_dir/*/redis.log)" >&2
    exit 1
  fi
  export XACTHUC_TEST_REDIS_CLUSTER_URL
  echo "test.sh: Redis Cluster at $XACTHUC_TEST_REDIS_CLUSTER_URL"
fi

# PostgreSQL: the tests create (and drop) their own database on the server at
# XACTHUC_TEST_DATABASE_URL (default: trust auth on 127.0.0.1:5432), or on one started here.
export XACTHUC_TEST_DATABASE_URL=${XACTHUC_TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
pg_up() { .venv/bin/python - "$1" 2>/dev/null <<'PY'
import asyncio, sys
import asyncpg
async def up() -> None:
    await (await asyncpg.connect(sys.argv[1], timeout=3)).close()
asyncio.run(up())
PY
}
if ! pg_up "$XACTHUC_TEST_DATABASE_URL"; then
  pgbin=$(dirname "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | tail -1)")
  if [ -x "$pgbin/initdb" ] && [ -x "$pgbin/pg_ctl" ]; then
    port=${XACTHUC_TEST_PG_PORT:-5439}
    pgdir=$(mktemp -d)
    as=()
    if [ "$(id -u)" = 0 ]; then  # initdb refuses to run as root
      id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
      chown postgres "$pgdir"
      as=(runuser -u postgres --)
    fi
    echo "test.sh: no PostgreSQL at $XACTHUC_TEST_DATABASE_URL; starting one on 127.0.0.1:$port"
    "${as[@]}" "$pgbin/initdb" -D "$pgdir/data" -U postgres --auth=trust >"$pgdir/initdb.log"
    "${as[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/pg.log" -w \
      -o "-p $port -k $pgdir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
    cleanups+=("${as[*]} '$pgbin/pg_ctl' -D '$pgdir/data' -m immediate stop >/dev/null 2>&1; rm -rf '$pgdir'")
    export XACTHUC_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:$port/postgres"
  fi
  pg_up "$XACTHUC_TEST_DATABASE_URL" || {
    echo "test.sh: FAILED: PostgreSQL is required (none at $XACTHUC_TEST_DATABASE_URL and no initdb/pg_ctl to start one: apt-get install postgresql)" >&2
    exit 1
  }
fi

echo "test.sh: ruff"
.venv/bin/ruff check .
echo "test.sh: mypy --strict (source roots, tests, benchmarks, scripts)"
.venv/bin/mypy
echo "test.sh: import-linter (the layers of README 'Architecture')"
.venv/bin/lint-imports
if command -v npx >/dev/null; then
  echo "test.sh: buf lint"
  (cd protos && npx --yes @bufbuild/buf@1.75.0 lint)
  echo "test.sh: buf breaking (against the last v* tag; docs/versioning.md)"
  scripts/check_breaking.sh
else
  echo "test.sh: FAILED: npx (Node.js) is needed for 'buf lint' and 'buf breaking' of the protos" >&2
  exit 1
fi

echo "test.sh: pytest"
.venv/bin/pytest "$@"
