#!/usr/bin/env bash
# deploy/services.sh: make sure PostgreSQL and NATS (with JetStream) are up for
# Lifeline's tests and for local development.
#
#   deploy/services.sh [up]   use running servers; else start installed ones; else
#                             install them (Debian/Ubuntu, apt-get), configure, start;
#                             then wait until both answer (bounded).
#   deploy/services.sh status what answers where, and who started it (exit 1 if not ready)
#   deploy/services.sh down   stop ONLY what this script started (tracked in its state
#                             dir); servers that were already there are never touched
#   deploy/services.sh fetch  download the packages `up` would install, without
#                             installing them (for a later offline `up`)
#
# THIS IS FOR A DEVELOPMENT OR TEST MACHINE ONLY. When it installs or creates a
# PostgreSQL cluster it lets anyone on the machine log in over loopback TCP
# (127.0.0.1 and ::1) as any role, postgres included, WITHOUT A PASSWORD
# ("trust" in pg_hba.conf). Never run it on a shared or production server; see
# deploy/README.md for production.
#
# Environment (all optional):
#   LIFELINE_PG_HOST / LIFELINE_PG_PORT        default 127.0.0.1 / 5432
#   LIFELINE_NATS_HOST / LIFELINE_NATS_PORT    default 127.0.0.1 / 4222
#   LIFELINE_SERVICES_STATE_DIR   where pid/state files, the NATS store and log of the
#                                 servers this script starts live
#                                 (root: /var/lib/lifeline-dev-services,
#                                  others: ${XDG_STATE_HOME:-~/.local/state}/lifeline-dev-services)
#   LIFELINE_SERVICES_TIMEOUT     seconds to wait for readiness (default 60)
#   LIFELINE_SERVICES_NO_INSTALL=1  never run apt-get; fail instead
#   LIFELINE_PG_CONFIGURE_TRUST=1   also add the trust lines to an existing cluster
#                                   this script did not install or create
set -euo pipefail

ORIG_PATH=$PATH
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export PATH

PG_HOST=${LIFELINE_PG_HOST:-127.0.0.1}
PG_PORT=${LIFELINE_PG_PORT:-5432}
NATS_HOST=${LIFELINE_NATS_HOST:-127.0.0.1}
NATS_PORT=${LIFELINE_NATS_PORT:-4222}
TIMEOUT=${LIFELINE_SERVICES_TIMEOUT:-60}
if [[ $(id -u) -eq 0 ]]; then
    STATE_DIR=${LIFELINE_SERVICES_STATE_DIR:-/var/lib/lifeline-dev-services}
else
    STATE_DIR=${LIFELINE_SERVICES_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/lifeline-dev-services}
fi
NATS_PIDFILE="$STATE_DIR/nats-$NATS_PORT.pid"
NATS_STORE="$STATE_DIR/nats-$NATS_PORT"
NATS_LOG="$STATE_DIR/nats-$NATS_PORT.log"
PG_STATE="$STATE_DIR/postgres-$PG_PORT.started" # "<version> <cluster>" we started
APT_PACKAGES_PG=(postgresql postgresql-client)
APT_PACKAGES_NATS=(nats-server)
HBA_BEGIN="# BEGIN lifeline deploy/services.sh"
APT_UPDATED=0

say() { printf 'services: %s\n' "$*"; }
die() {
    printf 'services: ERROR: %s\n' "$*" >&2
    exit 1
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

is_local_host() { [[ $1 == 127.0.0.1 || $1 == localhost || $1 == ::1 ]]; }

# TCP connect with a short timeout, using bash's /dev/tcp (no extra tools).
# shellcheck disable=SC2016 # $1/$2 are expanded by the inner bash, on purpose
tcp_open() {
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# The INFO line a NATS server sends first on every client connection.
# shellcheck disable=SC2016 # $1/$2/$line are expanded by the inner bash, on purpose
nats_info() {
    timeout 4 bash -c 'exec 3<>"/dev/tcp/$1/$2" || exit 1
        IFS= read -r -t 3 line <&3 || exit 1
        printf "%s\n" "$line"' _ "$1" "$2" 2>/dev/null || true
}

nats_js_ready() {
    local info
    info=$(nats_info "$NATS_HOST" "$NATS_PORT")
    [[ $info == INFO\ * && $info == *'"jetstream":true'* ]]
}

nats_version() {
    sed -n 's/.*"version":"\([^"]*\)".*/\1/p' <<<"$1"
}

# -w: never prompt for a password (no stdin in CI); -X: ignore ~/.psqlrc.
pg_query() {
    psql -w -X -At -q "host=$PG_HOST port=$PG_PORT user=postgres dbname=postgres connect_timeout=3" -c "$1"
}

pg_login_ok() {
    command -v psql >/dev/null 2>&1 && tcp_open "$PG_HOST" "$PG_PORT" && [[ $(pg_query 'select 1' 2>/dev/null) == 1 ]]
}

# Poll "$@" until it succeeds or the deadline passes.
wait_for() {
    local deadline=$((SECONDS + TIMEOUT))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

is_debian_like() {
    [[ -r /etc/os-release ]] || return 1
    local id id_like
    id=$(. /etc/os-release && printf '%s' "${ID:-}")
    id_like=$(. /etc/os-release && printf '%s' "${ID_LIKE:-}")
    [[ $id == debian || $id == ubuntu || " $id_like " == *" debian "* ]] && command -v apt-get >/dev/null 2>&1
}

apt_update_once() {
    ((APT_UPDATED)) && return 0
    APT_UPDATED=1
    say "apt-get update"
    if ! as_root apt-get update -qq; then
        say "warning: apt-get update failed; trying with the package lists this machine already has"
    fi
}

install_packages() {
    if [[ ${LIFELINE_SERVICES_NO_INSTALL:-0} == 1 ]]; then
        die "$* not installed and LIFELINE_SERVICES_NO_INSTALL=1: install them yourself"
    fi
    is_debian_like || die "$* not installed; automatic install supports Debian/Ubuntu (apt-get) only: install PostgreSQL and nats-server >= 2.9 yourself"
    apt_update_once
    say "installing (apt-get): $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
        die "apt-get install $* failed"
}

# ---------------------------------------------------------------- PostgreSQL

pg_server_installed() {
    command -v pg_lsclusters >/dev/null 2>&1 && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

# Prints "<version> <name> <status>" of the local Debian cluster on PG_PORT.
pg_find_cluster() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 1
    local ver name port status _rest
    while read -r ver name port status _rest; do
        if [[ $port == "$PG_PORT" ]]; then
            printf '%s %s %s\n' "$ver" "$name" "$status"
            return 0
        fi
    done < <(pg_lsclusters -h 2>/dev/null)
    return 1
}

# DEVELOPMENT/TEST MACHINE ONLY: trust (no password) for loopback TCP, put first
# in pg_hba.conf because PostgreSQL uses the first line that matches.
pg_configure_trust() {
    local ver=$1 name=$2 hba
    hba=/etc/postgresql/$ver/$name/pg_hba.conf
    [[ -f $hba ]] || die "postgres: $hba not found"
    if as_root grep -qF "$HBA_BEGIN" "$hba"; then
        say "postgres: $hba already has the loopback trust lines"
        return 0
    fi
    say "postgres: adding loopback trust lines (development/test only) to $hba"
    as_root cp -p "$hba" "$hba.before-lifeline"
    {
        printf '%s: DEVELOPMENT/TEST MACHINE ONLY.\n' "$HBA_BEGIN"
        printf '# Anyone on this machine may log in over loopback TCP as any role, postgres\n'
        printf '# included, without a password. Never keep this on a shared or production server.\n'
        printf 'host    all             all             127.0.0.1/32            trust\n'
        printf 'host    all             all             ::1/128                 trust\n'
        printf '# END lifeline deploy/services.sh\n\n'
        as_root cat "$hba.before-lifeline"
    } >"$STATE_DIR/pg_hba.conf.new"
    as_root cp "$STATE_DIR/pg_hba.conf.new" "$hba"
    rm -f "$STATE_DIR/pg_hba.conf.new"
}

ensure_postgres() {
    local cluster ver name status configured=0 made=0 err

    if ! command -v psql >/dev/null 2>&1; then
        if tcp_open "$PG_HOST" "$PG_PORT"; then
            install_packages postgresql-client
        else
            install_packages "${APT_PACKAGES_PG[@]}"
            made=1
        fi
    fi

    if pg_login_ok; then
        say "postgres: $PG_HOST:$PG_PORT up, trust login as postgres ok (server $(pg_query 'show server_version' | cut -d' ' -f1))"
        return 0
    fi

    is_local_host "$PG_HOST" || die "postgres: $PG_HOST:$PG_PORT does not accept a login as postgres, and it is not on this machine"

    if ! pg_server_installed; then
        install_packages "${APT_PACKAGES_PG[@]}"
        made=1
    fi

    if ! cluster=$(pg_find_cluster); then
        command -v pg_createcluster >/dev/null 2>&1 ||
            die "postgres: no server on port $PG_PORT and no pg_createcluster (not Debian's postgresql-common?)"
        ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -n | tail -1)
        name=main
        [[ -d /etc/postgresql/$ver/main ]] && name=lifeline
        say "postgres: creating cluster $ver/$name on port $PG_PORT"
        as_root pg_createcluster "$ver" "$name" --port "$PG_PORT" >/dev/null
        made=1
        cluster=$(pg_find_cluster) || die "postgres: created cluster $ver/$name but pg_lsclusters does not show it on port $PG_PORT"
    fi
    read -r ver name status <<<"$cluster"

    if ((made)) || [[ ${LIFELINE_PG_CONFIGURE_TRUST:-0} == 1 ]]; then
        mkdir -p "$STATE_DIR"
        pg_configure_trust "$ver" "$name"
        configured=1
    fi

    if [[ $status == online* ]]; then
        if ((configured)); then
            say "postgres: cluster $ver/$name is running; reloading its configuration"
            as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" reload
        fi
    else
        say "postgres: starting cluster $ver/$name (port $PG_PORT)"
        mkdir -p "$STATE_DIR"
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start ||
            die "postgres: pg_ctlcluster $ver $name start failed; see /var/log/postgresql/postgresql-$ver-$name.log"
        printf '%s %s\n' "$ver" "$name" >"$PG_STATE"
    fi

    if ! wait_for pg_login_ok; then
        err=$(pg_query 'select 1' 2>&1 || true)
        if tcp_open "$PG_HOST" "$PG_PORT" && ((!configured)); then
            die "postgres: $PG_HOST:$PG_PORT accepts connections but login as postgres without a password fails ($err). This script does not change a cluster it did not install or create; add 'host all all 127.0.0.1/32 trust' at the top of /etc/postgresql/$ver/$name/pg_hba.conf, or rerun with LIFELINE_PG_CONFIGURE_TRUST=1 (development/test machine only)"
        fi
        die "postgres: not ready on $PG_HOST:$PG_PORT after ${TIMEOUT}s ($err); see /var/log/postgresql/postgresql-$ver-$name.log"
    fi
    # The tests connect as role postgres to database postgres; both come with every
    # cluster, so no other role or database is created here.
    say "postgres: $PG_HOST:$PG_PORT up, trust login as postgres ok (server $(pg_query 'show server_version' | cut -d' ' -f1))"
}

# ---------------------------------------------------------------------- NATS

nats_bin() {
    local p
    for p in "$(command -v nats-server 2>/dev/null || true)" /usr/sbin/nats-server /usr/local/bin/nats-server /usr/local/sbin/nats-server; do
        if [[ -n $p && -x $p ]]; then
            readlink -f "$p"
            return 0
        fi
    done
    return 1
}

# pid from our pid file, if that process is alive and is a nats-server.
our_nats_pid() {
    local pid comm
    [[ -f $NATS_PIDFILE ]] || return 1
    pid=$(<"$NATS_PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == nats-server ]] || return 1
    printf '%s\n' "$pid"
}

ensure_nats_on_path() {
    local bin
    bin=$(nats_bin) || {
        install_packages "${APT_PACKAGES_NATS[@]}"
        bin=$(nats_bin) || die "nats-server still not found after installing"
    }
    if PATH=$ORIG_PATH command -v nats-server >/dev/null 2>&1; then
        say "nats-server binary: $(PATH=$ORIG_PATH command -v nats-server) (on PATH; $("$bin" --version 2>&1))"
    elif [[ -w /usr/local/bin || $(id -u) -eq 0 ]]; then
        ln -sf "$bin" /usr/local/bin/nats-server
        say "nats-server binary: $bin, linked as /usr/local/bin/nats-server so that it is on PATH"
    else
        say "nats-server binary: $bin is not on your PATH; deploy/test.sh adds $(dirname "$bin")"
    fi
}

ensure_nats() {
    local info bin pid
    info=$(nats_info "$NATS_HOST" "$NATS_PORT")
    if [[ $info == INFO\ * ]]; then
        if [[ $info == *'"jetstream":true'* ]]; then
            say "nats: $NATS_HOST:$NATS_PORT up with JetStream (nats-server $(nats_version "$info"))"
            return 0
        fi
        die "nats: the server on $NATS_HOST:$NATS_PORT runs WITHOUT JetStream; this script does not touch a server it did not start: restart it with -js, or use another port (LIFELINE_NATS_PORT)"
    fi
    if tcp_open "$NATS_HOST" "$NATS_PORT"; then
        die "nats: something accepts connections on $NATS_HOST:$NATS_PORT but does not speak NATS (no INFO line)"
    fi
    is_local_host "$NATS_HOST" || die "nats: nothing answers on $NATS_HOST:$NATS_PORT, and it is not on this machine"

    if pid=$(our_nats_pid); then
        say "nats: our nats-server (pid $pid) is running but not answering yet; waiting"
    else
        bin=$(nats_bin) || {
            install_packages "${APT_PACKAGES_NATS[@]}"
            bin=$(nats_bin) || die "nats-server still not found after installing"
        }
        mkdir -p "$NATS_STORE"
        say "nats: starting $bin on $NATS_HOST:$NATS_PORT with JetStream (store $NATS_STORE, log $NATS_LOG)"
        if command -v start-stop-daemon >/dev/null 2>&1; then
            start-stop-daemon --start --oknodo --background --make-pidfile --pidfile "$NATS_PIDFILE" \
                --exec "$bin" -- -a "$NATS_HOST" -p "$NATS_PORT" -js -sd "$NATS_STORE" -l "$NATS_LOG"
        else
            setsid "$bin" -a "$NATS_HOST" -p "$NATS_PORT" -js -sd "$NATS_STORE" -l "$NATS_LOG" \
                </dev/null >/dev/null 2>&1 &
            printf '%s\n' "$!" >"$NATS_PIDFILE"
        fi
    fi
    if ! wait_for nats_js_ready; then
        die "nats: no JetStream-enabled server on $NATS_HOST:$NATS_PORT after ${TIMEOUT}s; last log lines: $(tail -n 5 "$NATS_LOG" 2>/dev/null | tr '\n' ' ')"
    fi
    info=$(nats_info "$NATS_HOST" "$NATS_PORT")
    say "nats: $NATS_HOST:$NATS_PORT up with JetStream (nats-server $(nats_version "$info"), pid $(our_nats_pid || echo '?'))"
}

# ------------------------------------------------------------------ commands

cmd_up() {
    mkdir -p "$STATE_DIR"
    ensure_postgres
    ensure_nats
    ensure_nats_on_path
    say "ready: postgres://postgres@$PG_HOST:$PG_PORT/postgres nats://$NATS_HOST:$NATS_PORT"
}

cmd_status() {
    local ok=0 info pid by
    if pg_login_ok; then
        by="was already there (not started by this script)"
        [[ -f $PG_STATE ]] && by="started by this script (cluster $(<"$PG_STATE"))"
        say "postgres: $PG_HOST:$PG_PORT up, trust login as postgres ok (server $(pg_query 'show server_version' | cut -d' ' -f1)); $by"
    elif tcp_open "$PG_HOST" "$PG_PORT"; then
        say "postgres: $PG_HOST:$PG_PORT accepts connections but login as postgres without a password fails"
        ok=1
    else
        say "postgres: nothing on $PG_HOST:$PG_PORT"
        ok=1
    fi
    info=$(nats_info "$NATS_HOST" "$NATS_PORT")
    if [[ $info == INFO\ * ]]; then
        by="was already there (not started by this script)"
        pid=$(our_nats_pid) && by="started by this script (pid $pid)"
        if [[ $info == *'"jetstream":true'* ]]; then
            say "nats: $NATS_HOST:$NATS_PORT up with JetStream (nats-server $(nats_version "$info")); $by"
        else
            say "nats: $NATS_HOST:$NATS_PORT up but JetStream is OFF; $by"
            ok=1
        fi
    else
        say "nats: nothing speaking NATS on $NATS_HOST:$NATS_PORT"
        ok=1
    fi
    if PATH=$ORIG_PATH command -v nats-server >/dev/null 2>&1; then
        say "nats-server binary: $(PATH=$ORIG_PATH command -v nats-server) (on PATH)"
    elif nats_bin >/dev/null; then
        say "nats-server binary: $(nats_bin) (not on PATH)"
    else
        say "nats-server binary: not installed"
    fi
    return "$ok"
}

cmd_down() {
    local pid ver name i
    if pid=$(our_nats_pid); then
        say "nats: stopping the nats-server this script started (pid $pid)"
        kill -TERM "$pid"
        for ((i = 0; i < 40; i++)); do
            [[ -d /proc/$pid ]] || break
            sleep 0.25
        done
        if [[ -d /proc/$pid ]]; then
            say "nats: pid $pid still running after 10s; sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    else
        say "nats: nothing to stop (no running nats-server started by this script on port $NATS_PORT)"
    fi
    rm -f "$NATS_PIDFILE"

    if [[ -f $PG_STATE ]]; then
        read -r ver name <"$PG_STATE"
        say "postgres: stopping cluster $ver/$name that this script started"
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" stop || say "postgres: stop failed (already stopped?)"
        rm -f "$PG_STATE"
    else
        say "postgres: nothing to stop (this script did not start the server on port $PG_PORT)"
    fi
}

cmd_fetch() {
    is_debian_like || die "fetch supports Debian/Ubuntu (apt-get) only"
    apt_update_once
    say "downloading (not installing): ${APT_PACKAGES_PG[*]} ${APT_PACKAGES_NATS[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --download-only \
        "${APT_PACKAGES_PG[@]}" "${APT_PACKAGES_NATS[@]}" >/dev/null
}

case "${1:-up}" in
up) cmd_up ;;
status) cmd_status ;;
down) cmd_down ;;
fetch) cmd_fetch ;;
-h | --help | help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//' ;;
*) die "unknown command '$1' (use: up | status | down | fetch)" ;;
esac
