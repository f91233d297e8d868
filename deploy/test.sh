#!/usr/bin/env bash
# deploy/test.sh: the one command that runs all of Lifeline's tests.
#
#   bash deploy/test.sh [extra cargo test arguments...]
#
# 1. deploy/services.sh up: PostgreSQL and NATS with JetStream are running (used as
#    found, started, or installed and started: see that script).
# 2. cargo test --workspace --locked, with the services' URLs exported for the
#    integration tests unless they are already set:
#      LIFELINE_TEST_POSTGRES_URL  default postgres://postgres@127.0.0.1:5432/postgres
#      LIFELINE_TEST_NATS_URL      default nats://127.0.0.1:4222
#    and nats-server on PATH (some tests start private nats-server processes).
# Exits non-zero if the services cannot be brought up or any test fails.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."

bash "$here/services.sh" up

export LIFELINE_TEST_POSTGRES_URL="${LIFELINE_TEST_POSTGRES_URL:-postgres://postgres@${LIFELINE_PG_HOST:-127.0.0.1}:${LIFELINE_PG_PORT:-5432}/postgres}"
export LIFELINE_TEST_NATS_URL="${LIFELINE_TEST_NATS_URL:-nats://${LIFELINE_NATS_HOST:-127.0.0.1}:${LIFELINE_NATS_PORT:-4222}}"

# Debian installs nats-server in /usr/sbin, which is not on every user's PATH.
if ! command -v nats-server >/dev/null 2>&1; then
    for dir in /usr/sbin /usr/local/sbin /sbin; do
        if [[ -x $dir/nats-server ]]; then
            export PATH="$PATH:$dir"
            break
        fi
    done
fi
command -v nats-server >/dev/null 2>&1 || {
    echo "test: ERROR: nats-server is not on PATH" >&2
    exit 1
}

# Process tests run the `lifeline` binary that this very `cargo test` builds (the workspace's
# tests include the binary's own), rather than each building it again.
export LIFELINE_TEST_BIN="${LIFELINE_TEST_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/lifeline}"

echo "test: LIFELINE_TEST_POSTGRES_URL=$LIFELINE_TEST_POSTGRES_URL"
echo "test: LIFELINE_TEST_NATS_URL=$LIFELINE_TEST_NATS_URL"
echo "test: nats-server=$(command -v nats-server)"
echo "test: cargo test --workspace --locked $*"
exec cargo test --workspace --locked "$@"
