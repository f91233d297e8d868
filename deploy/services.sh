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
#   deploy/services.sh tools  what building and testing need besides Rust: a C compiler
#                             (gcc, libc6-dev: ring, SQLite and mimalloc build C) and
#                             procps (`kill`, which a test runs); installed with apt-get
#                             when missing. Rust itself (cargo, rustc) comes from rustup,
#                             not from these distributions' packages (too old): checked by
#                             deploy/test.sh.
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
#   LIFELINE_SERVICES_SKIP_POSTGRES=1 / LIFELINE_SERVICES_SKIP_NATS=1
#                                 `up` leaves that server alone (deploy/test.sh sets them when
#                                 the caller names a server of their own with
#                                 LIFELINE_TEST_POSTGRES_URL / LIFELINE_TEST_NATS_URL); `up`
#                                 still makes sure the nats-server binary is there
#
# The project targets nats-server 2.9 (Debian 12's 2.9.10). Another version found or
# installed (Ubuntu 24.04 ships 2.10) gets a warning; a release without the package
# (Ubuntu 22.04) gets an error naming it: install nats-server 2.9 yourself then.
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
PG_STATE="$STATE_DIR/postgres-$PG_PORT.started" # "<version> <cluster> <boot id>" we started
APT_PACKAGES_PG=(postgresql postgresql-client)
APT_PACKAGES_NATS=(nats-server)
HBA_BEGIN="# BEGIN lifeline deploy/services.sh"
APT_UPDATED=0
# New PostgreSQL clusters (ours, and the one the postgresql package's postinst creates)
# would otherwise take the caller's locale: SQL_ASCII with LANG unset, and initdb fails
# with a LANG whose locale is not generated. C.UTF-8 exists everywhere and gives UTF8,
# as on CI's cluster.
PG_LOCALE=C.UTF-8

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

# Poll "$@" until it succeeds (status 0) or the deadline passes (1). With
# `--alive CMD` first, also give up at once (2) when CMD fails between two polls: the
# process being waited for has died (or, for PostgreSQL, waiting cannot help).
wait_for() {
    local alive=true deadline=$((SECONDS + TIMEOUT))
    if [[ $1 == --alive ]]; then
        alive=$2
        shift 2
    fi
    until "$@"; do
        "$alive" || return 2
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

# Is process $1 alive (a zombie is not)?
pid_alive() {
    local state
    state=$(sed -n 's/^.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# The last lines of log file $1 on one line; nothing if it is missing or unreadable
# (sudo -n: never ask for a password just for this).
log_tail() {
    if [[ -r $1 ]]; then
        tail -n 5 "$1"
    elif [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then
        sudo -n tail -n 5 "$1" 2>/dev/null
    fi | tr '\n' ' ' || true
}

is_debian_like() {
    [[ -r /etc/os-release ]] || return 1
    local id id_like
    id=$(. /etc/os-release && printf '%s' "${ID:-}")
    id_like=$(. /etc/os-release && printf '%s' "${ID_LIKE:-}")
    [[ $id == debian || $id == ubuntu || " $id_like " == *" debian "* ]] && command -v apt-get >/dev/null 2>&1
}

# apt-get as root, non-interactive. DPkg::Lock::Timeout: on a machine's first boot
# unattended-upgrades may hold the dpkg lock for minutes; wait up to 10 minutes for it
# instead of failing at once. C.UTF-8: see PG_LOCALE (postgresql's postinst creates the
# first cluster with apt-get's locale).
apt_get() {
    as_root env DEBIAN_FRONTEND=noninteractive LANG="$PG_LOCALE" LC_ALL="$PG_LOCALE" \
        apt-get -o DPkg::Lock::Timeout=600 "$@"
}

apt_update_once() {
    ((APT_UPDATED)) && return 0
    APT_UPDATED=1
    say "apt-get update"
    if ! apt_get update -qq; then
        say "warning: apt-get update failed; trying with the package lists this machine already has"
    fi
}

os_name() {
    (. /etc/os-release && printf '%s' "${PRETTY_NAME:-${ID:-this system}}") 2>/dev/null || printf 'this system'
}

install_packages() {
    local pkg candidate hint missing=()
    if [[ ${LIFELINE_SERVICES_NO_INSTALL:-0} == 1 ]]; then
        die "$* not installed and LIFELINE_SERVICES_NO_INSTALL=1: install them yourself"
    fi
    is_debian_like || die "$* not installed; automatic install supports Debian/Ubuntu (apt-get) only: install PostgreSQL and nats-server 2.9 yourself"
    apt_update_once
    # Name a package the release does not have (Ubuntu 22.04 has no nats-server) rather
    # than let apt-get fail with its output hidden.
    for pkg in "$@"; do
        candidate=$(LC_ALL=C apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: *//p') || true
        [[ -n $candidate && $candidate != "(none)" ]] || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        hint=
        [[ " ${missing[*]} " == *" nats-server "* ]] &&
            hint=" (nats-server: version 2.9, on PATH or in /usr/sbin, /usr/local/bin or /usr/local/sbin)"
        die "apt knows no installable package ${missing[*]} on $(os_name) (not in this release, or no package lists: apt-get update failed?). Install it yourself$hint, then rerun"
    fi
    say "installing (apt-get): $*"
    apt_get install -y -qq --no-install-recommends "$@" >/dev/null ||
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

# The server answers (pg_isready: accepting connections), yet logging in as postgres
# without a password fails: waiting does not change that.
pg_refuses_login() {
    command -v pg_isready >/dev/null 2>&1 &&
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 3 && ! pg_login_ok
}

# wait_for --alive check while PostgreSQL is awaited: fails, so that the wait ends at
# once, when the cluster on PG_PORT is down (it stopped or died), or when this script
# changed nothing in its pg_hba.conf (PG_WAIT_CONFIGURED=0) and the server refuses the
# login although it accepts connections.
PG_WAIT_CONFIGURED=0
pg_wait_hopeful() {
    local cluster
    cluster=$(pg_find_cluster) || return 1
    [[ ${cluster##* } == online* ]] || return 1
    ((PG_WAIT_CONFIGURED)) || ! pg_refuses_login
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
    local cluster ver name status configured=0 made=0 err rc log

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

    # A server that answers but refuses the login, and is no Debian cluster (pg_lsclusters)
    # this script could configure (a container's, a source build's): stop here, at once,
    # rather than install packages and create a cluster whose start must fail on the
    # busy port.
    if ! pg_find_cluster >/dev/null && pg_refuses_login; then
        err=$(pg_query 'select 1' 2>&1 || true)
        die "postgres: the server on $PG_HOST:$PG_PORT accepts connections but login as postgres without a password fails ($err), and it is not a Debian cluster (pg_lsclusters) this script can configure: allow that login, or use another port (LIFELINE_PG_PORT)"
    fi

    if ! pg_server_installed; then
        install_packages "${APT_PACKAGES_PG[@]}"
        made=1
    fi

    if ! cluster=$(pg_find_cluster); then
        command -v pg_createcluster >/dev/null 2>&1 ||
            die "postgres: no server on port $PG_PORT and no pg_createcluster (not Debian's postgresql-common?)"
        # The newest version whose server is installed: /usr/lib/postgresql/N may hold
        # only client files (postgresql-client-N without postgresql-N).
        ver=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' -printf '%P\n' 2>/dev/null |
            cut -d/ -f1 | sort -n | tail -n 1) || true
        [[ -n $ver ]] || die "postgres: no /usr/lib/postgresql/<version>/bin/postgres found"
        name=main
        [[ -d /etc/postgresql/$ver/main ]] && name=lifeline
        say "postgres: creating cluster $ver/$name on port $PG_PORT (locale $PG_LOCALE)"
        as_root env LANG="$PG_LOCALE" LC_ALL="$PG_LOCALE" \
            pg_createcluster --locale "$PG_LOCALE" --port "$PG_PORT" "$ver" "$name" >/dev/null
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
        # Installed or created just now, and started by the package's own scripts (where
        # systemd runs, the postinst starts every cluster): ours all the same, for `down`.
        if ((made)); then
            printf '%s %s %s\n' "$ver" "$name" "$(boot_id)" >"$PG_STATE"
        fi
    else
        say "postgres: starting cluster $ver/$name (port $PG_PORT)"
        mkdir -p "$STATE_DIR"
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start ||
            die "postgres: pg_ctlcluster $ver $name start failed; see /var/log/postgresql/postgresql-$ver-$name.log"
        printf '%s %s %s\n' "$ver" "$name" "$(boot_id)" >"$PG_STATE"
    fi

    rc=0
    PG_WAIT_CONFIGURED=$configured
    wait_for --alive pg_wait_hopeful pg_login_ok || rc=$?
    if ((rc)); then
        err=$(pg_query 'select 1' 2>&1 || true)
        log=/var/log/postgresql/postgresql-$ver-$name.log
        if ! cluster=$(pg_find_cluster) || [[ ${cluster##* } != online* ]]; then
            die "postgres: cluster $ver/$name is down: it stopped while this script waited for it ($err); last lines of $log: $(log_tail "$log")"
        fi
        if tcp_open "$PG_HOST" "$PG_PORT" && ((!configured)); then
            die "postgres: $PG_HOST:$PG_PORT accepts connections but login as postgres without a password fails ($err). This script does not change a cluster it did not install or create; add 'host all all 127.0.0.1/32 trust' at the top of /etc/postgresql/$ver/$name/pg_hba.conf, or rerun with LIFELINE_PG_CONFIGURE_TRUST=1 (development/test machine only)"
        fi
        die "postgres: not ready on $PG_HOST:$PG_PORT after ${TIMEOUT}s ($err); last lines of $log: $(log_tail "$log")"
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

# pid from our pid file, if that process is alive and is the nats-server this script
# started: a nats-server whose command line names our store directory (after a reboot, or
# once it died, the pid may be another process's, another nats-server's included).
our_nats_pid() {
    local pid comm cmdline
    [[ -f $NATS_PIDFILE ]] || return 1
    pid=$(<"$NATS_PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == nats-server ]] || return 1
    cmdline=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    grep -qxF -- "$NATS_STORE" <<<"$cmdline" || return 1
    printf '%s\n' "$pid"
}

# This boot's id: a state file written in an earlier boot names a server that boot
# started, not this one (which the machine's own services may have started since).
boot_id() {
    cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown
}

# "<version> <cluster>" of the PostgreSQL cluster this script started or installed in this
# boot, if any.
our_pg_cluster() {
    local ver name boot
    [[ -f $PG_STATE ]] || return 1
    read -r ver name boot <"$PG_STATE" || true
    [[ -n $ver && -n $name && $boot == "$(boot_id)" ]] || return 1
    printf '%s %s\n' "$ver" "$name"
}

# Debian's nats-server package enables and, where systemd runs, starts its own
# nats-server.service: /etc/nats-server.conf, 127.0.0.1:4222, NO JetStream. That server
# would hold the port this script's `nats-server -js` needs (which then cannot listen),
# and come back at every boot. So right after THIS script installed the package, and only
# then, that unit is disabled and stopped; a nats-server that was there before is never
# touched (one with JetStream on the port is used as found). A unit of the same name
# from /etc/systemd/system (an operator's own) is left alone too.
# Not a policy-rc.d that exits 101 during the install: it would not stop the enabling
# (the unit would start at the next boot), and it would deny every package's starts and
# restarts, machine-wide, for as long as apt-get waits for the dpkg lock (up to 10
# minutes, perhaps behind unattended-upgrades); containers often have one already.
install_nats_server() {
    local unit=nats-server.service fragment
    install_packages "${APT_PACKAGES_NATS[@]}"
    [[ -d /run/systemd/system ]] || return 0
    fragment=$(systemctl show -p FragmentPath --value "$unit" 2>/dev/null) || true
    case $fragment in
    /lib/systemd/system/* | /usr/lib/systemd/system/*)
        say "nats: disabling and stopping the package's own $unit (no JetStream; it would hold port 4222)"
        as_root systemctl disable --now --quiet "$unit" ||
            say "warning: systemctl disable --now $unit failed; it may hold port 4222"
        ;;
    esac
}

# The project targets nats-server 2.9 (Debian 12's 2.9.10: the tests and deploy/nats/*.conf
# are checked with it). Another version may work but is untested here: warn, go on.
nats_warn_version() {
    [[ $2 == 2.9.* ]] && return 0
    say "warning: $1 is nats-server ${2:-(version unknown)}, not 2.9.x, the version this project targets and tests (Debian 12's 2.9.10)"
}

# wait_for --alive check for the nats-server this script started: the pid in its pid file
# is alive. start-stop-daemon --background may return before the daemon has written the
# pid file, so a missing one counts as alive for 5 s after the start.
NATS_STARTED_AT=0
nats_started_alive() {
    local pid
    if [[ -s $NATS_PIDFILE ]]; then
        pid=$(<"$NATS_PIDFILE")
        [[ $pid =~ ^[0-9]+$ ]] && pid_alive "$pid"
    else
        ((SECONDS < NATS_STARTED_AT + 5))
    fi
}

ensure_nats_on_path() {
    local bin version
    bin=$(nats_bin) || {
        install_nats_server
        bin=$(nats_bin) || die "nats-server still not found after installing"
    }
    version=$("$bin" --version 2>&1 | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p' | head -n 1) || true
    nats_warn_version "the binary $bin" "$version"
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
    local info bin pid rc hint=
    info=$(nats_info "$NATS_HOST" "$NATS_PORT")
    if [[ $info == INFO\ * ]]; then
        if [[ $info == *'"jetstream":true'* ]]; then
            say "nats: $NATS_HOST:$NATS_PORT up with JetStream (nats-server $(nats_version "$info"))"
            nats_warn_version "the server on $NATS_HOST:$NATS_PORT" "$(nats_version "$info")"
            return 0
        fi
        if [[ -d /run/systemd/system ]] && systemctl is-active --quiet nats-server.service 2>/dev/null; then
            hint=" It may be the nats-server package's own nats-server.service (/etc/nats-server.conf has no JetStream): if nothing else needs it, 'sudo systemctl disable --now nats-server' and rerun."
        fi
        die "nats: the server on $NATS_HOST:$NATS_PORT runs WITHOUT JetStream; this script does not touch a server it did not start: restart it with -js, or use another port (LIFELINE_NATS_PORT).$hint"
    fi
    if tcp_open "$NATS_HOST" "$NATS_PORT"; then
        die "nats: something accepts connections on $NATS_HOST:$NATS_PORT but does not speak NATS (no INFO line)"
    fi
    is_local_host "$NATS_HOST" || die "nats: nothing answers on $NATS_HOST:$NATS_PORT, and it is not on this machine"

    if pid=$(our_nats_pid); then
        say "nats: our nats-server (pid $pid) is running but not answering yet; waiting"
        NATS_STARTED_AT=$SECONDS
    else
        bin=$(nats_bin) || {
            install_nats_server
            bin=$(nats_bin) || die "nats-server still not found after installing"
        }
        mkdir -p "$NATS_STORE"
        say "nats: starting $bin on $NATS_HOST:$NATS_PORT with JetStream (store $NATS_STORE, log $NATS_LOG)"
        NATS_STARTED_AT=$SECONDS
        if command -v start-stop-daemon >/dev/null 2>&1; then
            start-stop-daemon --start --oknodo --background --make-pidfile --pidfile "$NATS_PIDFILE" \
                --exec "$bin" -- -a "$NATS_HOST" -p "$NATS_PORT" -js -sd "$NATS_STORE" -l "$NATS_LOG"
        else
            setsid "$bin" -a "$NATS_HOST" -p "$NATS_PORT" -js -sd "$NATS_STORE" -l "$NATS_LOG" \
                </dev/null >/dev/null 2>&1 &
            printf '%s\n' "$!" >"$NATS_PIDFILE"
        fi
    fi
    rc=0
    wait_for --alive nats_started_alive nats_js_ready || rc=$?
    if ((rc == 2)); then
        die "nats: the nats-server this script started (pid file $NATS_PIDFILE) exited before it answered; last lines of $NATS_LOG: $(log_tail "$NATS_LOG")"
    elif ((rc)); then
        die "nats: no JetStream-enabled server on $NATS_HOST:$NATS_PORT after ${TIMEOUT}s; last lines of $NATS_LOG: $(log_tail "$NATS_LOG")"
    fi
    info=$(nats_info "$NATS_HOST" "$NATS_PORT")
    say "nats: $NATS_HOST:$NATS_PORT up with JetStream (nats-server $(nats_version "$info"), pid $(our_nats_pid || echo '?'))"
}

# ------------------------------------------------------------------ commands

cmd_up() {
    local ready=()
    mkdir -p "$STATE_DIR"
    if [[ ${LIFELINE_SERVICES_SKIP_POSTGRES:-0} == 1 ]]; then
        say "postgres: skipped (LIFELINE_SERVICES_SKIP_POSTGRES=1)"
    else
        ensure_postgres
        ready+=("postgres://postgres@$PG_HOST:$PG_PORT/postgres")
    fi
    if [[ ${LIFELINE_SERVICES_SKIP_NATS:-0} == 1 ]]; then
        say "nats: skipped (LIFELINE_SERVICES_SKIP_NATS=1)"
    else
        ensure_nats
        ready+=("nats://$NATS_HOST:$NATS_PORT")
    fi
    # Even when the NATS server is skipped: some tests start private nats-server processes.
    ensure_nats_on_path
    say "ready: ${ready[*]:-no server (both skipped)}"
}

cmd_status() {
    local ok=0 info pid by cluster
    if pg_login_ok; then
        by="was already there (not started by this script)"
        cluster=$(our_pg_cluster) && by="started by this script (cluster $cluster)"
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
    local pid ver name i cluster
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

    if cluster=$(our_pg_cluster); then
        read -r ver name <<<"$cluster"
        say "postgres: stopping cluster $ver/$name that this script started"
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" stop || say "postgres: stop failed (already stopped?)"
        rm -f "$PG_STATE"
    elif [[ -f $PG_STATE ]]; then
        say "postgres: not stopping: this script started the server on port $PG_PORT in an earlier boot (the machine started the one running now)"
        rm -f "$PG_STATE"
    else
        say "postgres: nothing to stop (this script did not start the server on port $PG_PORT)"
    fi
}

cmd_tools() {
    local missing=()
    command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
    [[ -x /bin/kill || -x /usr/bin/kill ]] || missing+=(procps)
    if ((${#missing[@]} == 0)); then
        say "tools: a C compiler ($(command -v cc)) and kill are there"
        return 0
    fi
    install_packages "${missing[@]}"
}

cmd_fetch() {
    is_debian_like || die "fetch supports Debian/Ubuntu (apt-get) only"
    apt_update_once
    say "downloading (not installing): ${APT_PACKAGES_PG[*]} ${APT_PACKAGES_NATS[*]}"
    apt_get install -y -qq --no-install-recommends --download-only \
        "${APT_PACKAGES_PG[@]}" "${APT_PACKAGES_NATS[@]}" >/dev/null
}

case "${1:-up}" in
up) cmd_up ;;
status) cmd_status ;;
down) cmd_down ;;
fetch) cmd_fetch ;;
tools) cmd_tools ;;
-h | --help | help) sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//' ;;
*) die "unknown command '$1' (use: up | status | down | fetch | tools)" ;;
esac
