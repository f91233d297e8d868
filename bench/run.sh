#!/usr/bin/env bash
# Runs the peer baselines (../shared/peers) and Lifeline's benchmarks (W1..W5) in one run,
# interleaved, ROUNDS times (default 3), then prints the medians and the target ratios and
# writes bench/results/summary.md and bench/results/w3_latency.svg.
#
#   bench/run.sh [ROUNDS]
#
# Environment:
#   PEERS_DIR          the peers' folder (default ../shared/peers); it may be read-only
#   PEERS_TARGET_DIR   where the peers are built (default target/peers, outside PEERS_DIR)
#   W3_SECONDS         seconds per W3 arrival rate (default 20)
#   W4_EVENTS          log size rebuilt by W4 in every round (default 20000)
#   W4_FULL_EVENTS     log size rebuilt once, after the rounds (default 200000; 0 skips it; 1000000 is the issue's size: about 3 min to generate and 25 s to rebuild here)
#   SETTLE_SECONDS     pause after the CHECKPOINT that precedes every step (default 3)
#   SKIP_BUILD=1       use the binaries already built
#   PEERS_ALL=1        also run the peers' cqrs-b, sqlx-batch and nats figures
# Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust; the peers' role and database
# `root` are created if missing) and NATS with JetStream on 127.0.0.1:4222
# (deploy/services.sh starts them).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${1:-3}
PEERS_DIR=${PEERS_DIR:-../shared/peers}
PEERS_TARGET_DIR=${PEERS_TARGET_DIR:-$ROOT/target/peers}
# Relative to the checkout, not to the peers' folder where the peers are built.
case $PEERS_TARGET_DIR in /*) ;; *) PEERS_TARGET_DIR=$ROOT/$PEERS_TARGET_DIR ;; esac
W3_SECONDS=${W3_SECONDS:-20}
W4_EVENTS=${W4_EVENTS:-20000}
W4_FULL_EVENTS=${W4_FULL_EVENTS:-200000}

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "== building (release)" >&2
  cargo build --release -q -p lifeline-bench -p lifeline
  (cd "$PEERS_DIR" && CARGO_TARGET_DIR="$PEERS_TARGET_DIR" cargo build --release -q)
fi
BENCH=$ROOT/target/release/lifeline-bench
PEERS=$PEERS_TARGET_DIR/release/peers-bench

mkdir -p bench/results
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=bench/results/raw-$STAMP.txt
: > "$OUT"

load() { cut -d' ' -f1-3 /proc/loadavg; }

# Before every step (peers' and Lifeline's alike): a PostgreSQL CHECKPOINT, so that the dirty
# pages and WAL of the step before are written back now rather than during this step, then a
# short pause. Without it the first figures after a heavy step (W1 right after the peers' own
# runs) paid for that step's write-back.
PG_URL=${LIFELINE_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
SETTLE_SECONDS=${SETTLE_SECONDS:-3}
settle() {
  if command -v psql >/dev/null 2>&1; then
    psql "$PG_URL" -qAt -c CHECKPOINT >/dev/null || echo "== (CHECKPOINT failed; not settled)" >&2
  fi
  sleep "$SETTLE_SECONDS"
}

# Each workload drops the database it made when it ends, but not when it is killed (Ctrl-C, a
# timeout). Before the run, the ones left that nobody is connected to are dropped: no other
# bench may run meanwhile anyway (its load would be in these figures).
drop_stale_databases() {
  command -v psql >/dev/null 2>&1 || return 0
  local name
  for name in $(psql "$PG_URL" -qAt -c "SELECT datname FROM pg_database d \
      WHERE datname LIKE 'lifeline\_bench\_%' \
      AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)"); do
    echo "== dropping $name, left by an interrupted run" >&2
    psql "$PG_URL" -qAt -c "DROP DATABASE IF EXISTS \"$name\"" >/dev/null || true
  done
}
drop_stale_databases

# The peers connect as role `root` to database `root` (../shared/peers/src/pgutil.rs), which
# the project's machines have and deploy/services.sh does not create: made here if missing.
ensure_peer_role() {
  command -v psql >/dev/null 2>&1 || return 0
  if [ -z "$(psql "$PG_URL" -qAt -c "SELECT 1 FROM pg_roles WHERE rolname = 'root'")" ]; then
    echo "== creating role root (SUPERUSER LOGIN) for the peers" >&2
    psql "$PG_URL" -qAt -c "CREATE ROLE root SUPERUSER LOGIN" >/dev/null
  fi
  if [ -z "$(psql "$PG_URL" -qAt -c "SELECT 1 FROM pg_database WHERE datname = 'root'")" ]; then
    echo "== creating database root for the peers" >&2
    psql "$PG_URL" -qAt -c "CREATE DATABASE root OWNER root" >/dev/null
  fi
}
ensure_peer_role

# One step: label, then the command; RESULT lines get the round number and the load average
# at the start of the step, and go to the raw file.
step() {
  local round=$1; shift
  settle
  local l; l=$(load | tr ' ' ',')
  echo "== round $round: $* (load $l)" >&2
  "$@" | sed -u "s|^RESULT |RESULT run=$round load=$l |" | tee -a "$OUT"
}

PEER_STEPS=(cqrs-a cqrs-c sqlx-single)
if [ "${PEERS_ALL:-0}" = 1 ]; then PEER_STEPS+=(cqrs-b sqlx-batch nats); fi

for r in $(seq 1 "$ROUNDS"); do
  # Interleaved: a peer figure, then the Lifeline figure it is compared with, and so on.
  step "$r" "$PEERS" cqrs-a
  step "$r" "$BENCH" w1
  step "$r" "$PEERS" sqlx-single
  step "$r" "$BENCH" w2
  step "$r" "$PEERS" cqrs-c
  step "$r" "$BENCH" w4 "$W4_EVENTS"
  step "$r" "$BENCH" w3 --seconds "$W3_SECONDS" 100 500 1000
  step "$r" "$BENCH" w5 500 "$W3_SECONDS"
  for extra in "${PEER_STEPS[@]:3}"; do step "$r" "$PEERS" "$extra"; done
done
if [ "$W4_FULL_EVENTS" != 0 ]; then
  step full "$BENCH" w4 "$W4_FULL_EVENTS"
fi

python3 bench/summarize.py --svg bench/results/w3_latency.svg "$OUT" | tee bench/results/summary.md
echo "raw: $OUT  summary: bench/results/summary.md  plot: bench/results/w3_latency.svg" >&2
