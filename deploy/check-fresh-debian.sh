#!/usr/bin/env bash
# deploy/check-fresh-debian.sh: prove that deploy/services.sh brings PostgreSQL
# and NATS+JetStream up on a Debian machine where NEITHER is installed.
#
#   sudo bash deploy/check-fresh-debian.sh [ROOT_DIR]    (default /tmp/lifeline-deb-check)
#
# Needs root on a Debian/Ubuntu host with debootstrap (installed if missing),
# unshare and ip (util-linux, iproute2). Takes a few minutes, mostly debootstrap.
#
# Procedure:
#  1. debootstrap --variant=minbase <suite> ROOT <mirror>: a bare Debian with neither
#     postgresql nor nats-server (checked). The mirror and suite are the host's own
#     (first Debian URI in /etc/apt/sources.list(.d), VERSION_CODENAME of
#     /etc/os-release); override with LIFELINE_DEBIAN_MIRROR / LIFELINE_DEBIAN_SUITE.
#  2. With the host's network, in a private mount namespace:
#     chroot ROOT deploy/services.sh fetch  -> apt-get update and download
#     (not install) the packages into the chroot's apt cache.
#  3. In NEW mount, network and pid namespaces (unshare -m -n -p): the chroot gets
#     its own loopback (lo brought up), so the host's PostgreSQL on 5432 and NATS on
#     4222 are invisible (checked: both ports refuse). There it runs
#     deploy/services.sh up, which must install (apt-get update fails offline, so it
#     installs from the cache), configure pg_hba trust, start both servers and wait
#     for them. Then it checks psql login, the new cluster's UTF8 encoding, the NATS
#     INFO line ("jetstream":true), nats-server on PATH, `status` naming this script
#     as the starter, a second `up` that starts nothing, and `down` stopping both. When the namespace's first
#     process exits the kernel ends anything left in it, so nothing outlives the check
#     and the host's own servers are never touched.
#  4. The ROOT directory is removed on success (kept on failure, or with
#     LIFELINE_CHECK_KEEP=1).
set -euo pipefail

ROOT=${1:-/tmp/lifeline-deb-check}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MARK=.lifeline-deb-check

say() { printf 'check: %s\n' "$*"; }
die() {
    printf 'check: FAILED: %s\n' "$*" >&2
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap, chroot and unshare need it)"
for tool in unshare ip chroot; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done
if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    # DPkg::Lock::Timeout: wait (up to 10 min) for a dpkg lock held by unattended-upgrades.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq debootstrap >/dev/null
fi

host_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        uri=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' "$f" | grep -v -e security -e updates | grep '/debian/\?$' | head -n 1 || true)
        [[ -n $uri ]] && {
            printf '%s\n' "$uri"
            return 0
        }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        uri=$(sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\{0,1\}\([^[:space:]]*\/debian\/\{0,1\}\)[[:space:]].*/\2/p' "$f" | grep -v security | head -n 1 || true)
        [[ -n $uri ]] && {
            printf '%s\n' "$uri"
            return 0
        }
    done
    return 1
}

MIRROR=${LIFELINE_DEBIAN_MIRROR:-$(host_mirror || true)}
[[ -n $MIRROR ]] || die "no Debian mirror found in /etc/apt sources; set LIFELINE_DEBIAN_MIRROR"
SUITE=${LIFELINE_DEBIAN_SUITE:-$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")}
[[ -n $SUITE ]] || die "no VERSION_CODENAME in /etc/os-release; set LIFELINE_DEBIAN_SUITE"

if [[ -e $ROOT ]]; then
    [[ -f $ROOT/$MARK ]] || die "$ROOT exists and was not made by this script; choose another directory"
    say "removing the previous check root $ROOT"
    rm -rf --one-file-system "$ROOT"
fi

# ---- 1. a bare Debian
say "debootstrap --variant=minbase $SUITE $ROOT <host mirror>"
started=$SECONDS
debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.debootstrap.log" 2>&1 ||
    die "debootstrap failed; see $ROOT.debootstrap.log"
touch "$ROOT/$MARK"
say "debootstrap done in $((SECONDS - started))s"
for pkg in postgresql nats-server postgresql-client; do
    if chroot "$ROOT" dpkg -s "$pkg" >/dev/null 2>&1; then die "$pkg is already installed in the fresh root"; fi
done
for bin in psql nats-server pg_ctlcluster; do
    if chroot "$ROOT" /bin/bash -c "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin command -v $bin" >/dev/null 2>&1; then
        die "$bin already exists in the fresh root"
    fi
done
say "fresh root: postgresql, postgresql-client, nats-server not installed; psql, nats-server, pg_ctlcluster absent"

mkdir -p "$ROOT/opt/lifeline"
cp -a "$here" "$ROOT/opt/lifeline/deploy"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true

# The chroot command with a clean environment; "$ROOT" is expanded by the inner bash.
# shellcheck disable=SC2016
in_root='chroot "$ROOT" /usr/bin/env -i HOME=/root LC_ALL=C.UTF-8 TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
export ROOT

# ---- 2. download the packages, with the host's network
say "phase 1 (host network): services.sh fetch"
# shellcheck disable=SC2016 # expanded by the inner bash
unshare --mount --fork /bin/bash -c '
    set -euo pipefail
    mount --make-rprivate /
    mount -t proc proc "$ROOT/proc"
    mount --rbind /dev "$ROOT/dev"
    '"$in_root"' bash /opt/lifeline/deploy/services.sh fetch
' || die "phase 1: fetch failed"

# ---- 3. install/start/stop with an isolated loopback
say "phase 2 (own network namespace, loopback only): services.sh up / status / up / down"
# shellcheck disable=SC2016 # expanded by the inner bash
unshare --mount --net --pid --fork /bin/bash -c '
    set -euo pipefail
    mount --make-rprivate /
    ip link set lo up
    mount -t proc proc "$ROOT/proc"
    mount --rbind /dev "$ROOT/dev"
    mount -t tmpfs -o mode=1777 tmpfs "$ROOT/dev/shm"
    IN_ROOT() { '"$in_root"' "$@"; }
    fail() { echo "check: FAILED: $*" >&2; exit 1; }

    for port in 5432 4222; do
        if IN_ROOT bash -c "timeout 2 bash -c \"exec 3<>/dev/tcp/127.0.0.1/$port\"" 2>/dev/null; then
            fail "port $port answers inside the namespace: not isolated"
        fi
    done
    echo "check: isolated: 127.0.0.1:5432 and 127.0.0.1:4222 refuse inside the namespace"

    echo "check: \$ deploy/services.sh up"
    IN_ROOT bash /opt/lifeline/deploy/services.sh up || fail "services.sh up"

    echo "check: \$ psql -h 127.0.0.1 -U postgres -w -c \"select 1\""
    out=$(IN_ROOT psql -h 127.0.0.1 -U postgres -w -X -At -c "select 1") || fail "psql login"
    [[ $out == 1 ]] || fail "psql printed $out"
    enc=$(IN_ROOT psql -h 127.0.0.1 -U postgres -w -X -At -c "show server_encoding") || fail "psql show server_encoding"
    [[ $enc == UTF8 ]] || fail "the new cluster has encoding $enc, not UTF8"
    echo "check: psql login as postgres without password: ok; encoding UTF8"
    info=$(IN_ROOT bash -c "exec 3<>/dev/tcp/127.0.0.1/4222; IFS= read -r -t 3 l <&3; echo \"\$l\"")
    [[ $info == *"\"jetstream\":true"* ]] || fail "NATS INFO lacks jetstream:true: $info"
    echo "check: NATS INFO says \"jetstream\":true"
    IN_ROOT bash -c "command -v nats-server" >/dev/null || fail "nats-server not on PATH"
    # The glob must expand inside the chroot (the host has its own /etc/postgresql), so a
    # bash there runs the grep.
    IN_ROOT bash -c "grep -q \"DEVELOPMENT/TEST MACHINE ONLY\" /etc/postgresql/*/main/pg_hba.conf" || fail "pg_hba.conf lacks the marked trust lines"
    echo "check: nats-server on PATH; pg_hba.conf carries the marked trust lines"

    echo "check: \$ deploy/services.sh status"
    st=$(IN_ROOT bash /opt/lifeline/deploy/services.sh status) || { echo "$st"; fail "status after up"; }
    echo "$st"
    [[ $(grep -c "started by this script" <<<"$st") == 2 ]] || fail "status does not name this script as the starter of both"

    echo "check: \$ deploy/services.sh up   (again: must start nothing)"
    again=$(IN_ROOT bash /opt/lifeline/deploy/services.sh up) || { echo "$again"; fail "second up"; }
    echo "$again"
    if grep -q -e starting -e installing <<<"$again"; then fail "second up started or installed something"; fi

    echo "check: \$ deploy/services.sh down"
    IN_ROOT bash /opt/lifeline/deploy/services.sh down || fail "down"
    echo "check: \$ deploy/services.sh status   (after down: expect not ready)"
    if IN_ROOT bash /opt/lifeline/deploy/services.sh status; then fail "status still ready after down"; fi
    for port in 5432 4222; do
        if IN_ROOT bash -c "timeout 2 bash -c \"exec 3<>/dev/tcp/127.0.0.1/$port\"" 2>/dev/null; then
            fail "port $port still answers after down"
        fi
    done
    left=$(for p in "$ROOT"/proc/[0-9]*; do c=$(cat "$p/comm" 2>/dev/null || true); case $c in postgres|nats-server) echo "$c";; esac; done)
    [[ -z $left ]] || fail "processes left after down: $left"
    echo "check: after down: both ports closed, no postgres or nats-server process left"
' || die "phase 2 failed; the root is kept at $ROOT"

say "host ports now (the host's own servers are never touched): $(timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5432' 2>/dev/null && echo 5432 open || echo 5432 closed), $(timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/4222' 2>/dev/null && echo 4222 open || echo 4222 closed)"
if [[ ${LIFELINE_CHECK_KEEP:-0} == 1 ]]; then
    say "keeping $ROOT (LIFELINE_CHECK_KEEP=1)"
else
    rm -rf --one-file-system "$ROOT" "$ROOT.debootstrap.log"
fi
say "PASSED: services.sh installed, configured, started, reported and stopped PostgreSQL and NATS+JetStream on a fresh Debian $SUITE"
