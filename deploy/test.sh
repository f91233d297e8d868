#!/usr/bin/env bash
# deploy/test.sh: the one command that runs all of Lifeline's tests.
#
#   bash deploy/test.sh [extra cargo test arguments...]
#
# 0. Rust at the workspace's rust-version or newer is there (checked, not installed: rustup), and
#    deploy/services.sh tools: a C compiler and kill (installed with apt-get if missing).
# 1. deploy/services.sh up: PostgreSQL and NATS with JetStream are running (used as
#    found, started, or installed and started: see that script). A service whose URL
#    below the caller has set is the caller's: services.sh leaves it alone.
# 2. cargo test --locked (with --workspace unless the arguments pick packages with
#    -p/--package), with the services' URLs exported for the integration tests unless
#    they are already set:
#      LIFELINE_TEST_POSTGRES_URL  default postgres://postgres@127.0.0.1:5432/postgres
#      LIFELINE_TEST_NATS_URL      default nats://127.0.0.1:4222
#    and nats-server on PATH (some tests start private nats-server processes).
# Exits non-zero if the services cannot be brought up or any test fails. The servers
# it started keep running afterwards: `bash deploy/services.sh down` stops them.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."

# Rust: cargo and a rustc at least as new as the workspace's rust-version. Not installed
# here (Debian's and Ubuntu's rustc are too old; rustup is the way), only checked, so that a
# machine without it is told what to do rather than fail in the middle of a build.
need_rust=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml | head -n 1)
if ! command -v cargo >/dev/null 2>&1 || ! command -v rustc >/dev/null 2>&1; then
    echo "test: ERROR: cargo and rustc are not on PATH: install Rust $need_rust or newer with rustup (https://rustup.rs), then rerun" >&2
    exit 1
fi
have_rust=$(rustc --version | sed -n 's/^rustc \([0-9][0-9.]*\).*/\1/p')
if [[ -n $need_rust && -n $have_rust ]] &&
    [[ $(printf '%s\n%s\n' "$need_rust" "$have_rust" | sort -V | head -n 1) != "$need_rust" ]]; then
    echo "test: ERROR: rustc $have_rust is older than this workspace's rust-version $need_rust: \`rustup update\`, then rerun" >&2
    exit 1
fi
# A C compiler and kill (deploy/services.sh tools: installed with apt-get if missing).
bash "$here/services.sh" tools

# A URL set by the caller names a server of their own (another host or port): then
# services.sh must not install or start that service on the standard port. It still
# makes sure nats-server is installed, for the tests' private servers.
skip_pg=${LIFELINE_SERVICES_SKIP_POSTGRES:-0}
skip_nats=${LIFELINE_SERVICES_SKIP_NATS:-0}
if [[ -n ${LIFELINE_TEST_POSTGRES_URL:-} ]]; then skip_pg=1; fi
if [[ -n ${LIFELINE_TEST_NATS_URL:-} ]]; then skip_nats=1; fi
LIFELINE_SERVICES_SKIP_POSTGRES=$skip_pg LIFELINE_SERVICES_SKIP_NATS=$skip_nats \
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

# Which packages, and which lifeline binary the process tests run.
# - `cargo test --workspace -p X` still tests every member (cargo only checks that X
#   exists), so --workspace is passed only when the arguments pick no package.
# - tests/src/chain.rs runs LIFELINE_TEST_BIN if it is set, else builds the current
#   binary itself (`cargo build -p lifeline --bin lifeline`, debug, into
#   CARGO_TARGET_DIR or target/). A whole-workspace `cargo test` in the dev profile
#   builds that very binary first (the `lifeline` package's own tests need it), so
#   pointing LIFELINE_TEST_BIN at it saves each test process a build. With any other
#   cargo option before `--` (-p, --exclude, --release, --profile, --target, --test,
#   --features, ...) this run may not build it, and target/debug/lifeline could be
#   stale or missing: LIFELINE_TEST_BIN is then left unset (unless the caller set it)
#   and the tests build it. Test-name filters and the options below change nothing
#   that is built.
workspace=(--workspace)
bin_built_here=1
for arg in "$@"; do
    case $arg in
    --) break ;;
    -p | -p?* | --package | --package=*)
        workspace=()
        bin_built_here=0
        ;;
    --no-fail-fast | -q | --quiet | -v | -vv | --verbose | -j | -j?* | --jobs | --jobs=* | \
        --color | --color=* | --locked | --offline | --frozen) ;;
    -*) bin_built_here=0 ;;
    esac
done
if [[ -n ${LIFELINE_TEST_BIN:-} ]]; then
    export LIFELINE_TEST_BIN
elif ((bin_built_here)); then
    export LIFELINE_TEST_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/lifeline"
else
    unset LIFELINE_TEST_BIN # an empty one would name no binary
fi

echo "test: LIFELINE_TEST_POSTGRES_URL=$LIFELINE_TEST_POSTGRES_URL"
echo "test: LIFELINE_TEST_NATS_URL=$LIFELINE_TEST_NATS_URL"
echo "test: nats-server=$(command -v nats-server)"
echo "test: LIFELINE_TEST_BIN=${LIFELINE_TEST_BIN:-(unset: the tests build the lifeline binary)}"
# ${a[@]+"${a[@]}"}: an empty array under `set -u` in any bash.
echo "test: cargo test ${workspace[*]+${workspace[*]} }--locked $*"
exec cargo test ${workspace[@]+"${workspace[@]}"} --locked "$@"
