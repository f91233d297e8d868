#!/usr/bin/env bash
# Runs one fuzz target (or all, one after another) with a seeded corpus, one process at a time.
#   fuzz/run.sh [TARGET|all] [SECONDS]      e.g. fuzz/run.sh declaration_parse 600
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); on stable, RUSTC_BOOTSTRAP=1 lets
# rustc accept the nightly flags cargo-fuzz passes. Release build with debug assertions and
# overflow checks (cargo-fuzz default), no sanitizer (`-s none`: the workspace forbids unsafe).
# One fuzzing process (plain libFuzzer mode; `-jobs=1` would fork one child logging to
# fuzz-0.log). Logs go to fuzz/logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")"
target=${1:-all}
seconds=${2:-600}
export RUSTC_BOOTSTRAP=1
targets=(pin_parse declaration_parse upcast_decode http_body)
[ "$target" = all ] || targets=("$target")

seed() {
    local name=$1 dir=corpus/$1
    mkdir -p "$dir"
    case $name in
    pin_parse)
        printf '079190001234\x01\x00\x00\x00\x01\x01' >"$dir/seed-pin"
        ;;
    declaration_parse | http_body)
        cp seeds/birth.json seeds/death.json "$dir/"
        ;;
    upcast_decode)
        # [type index in codec::all_schemas()][version][payload]: every committed fixture.
        local index=0
        for event_type in BirthRecorded DeathRecorded LifeEventCorrected LifeEventVoided \
            TaskCreated TaskClaimed TaskCompleted TaskRejected TaskCancelled TaskAmended \
            TaskOverdue PersonalIdAssigned EligibilityDecided PolicyFailed PersonalDataRead; do
            for fixture in ../events/model/tests/fixtures/"$event_type".v*.json; do
                local version=${fixture##*.v}
                version=${version%.json}
                { printf "\\x$(printf %02x "$index")\\x$(printf %02x "$version")"; cat "$fixture"; } \
                    >"$dir/seed-$event_type-v$version"
            done
            index=$((index + 1))
        done
        ;;
    esac
}

mkdir -p logs
cargo fuzz build -s none
binaries=target/$(rustc -vV | sed -n 's/^host: //p')/release
for name in "${targets[@]}"; do
    seed "$name"
    mkdir -p "artifacts/$name"
    echo "== $name: ${seconds}s" | tee "logs/$name.log"
    # The binary itself, not `cargo fuzz run`: no rebuild while others edit the workspace.
    "$binaries/$name" -artifact_prefix="artifacts/$name/" "corpus/$name" \
        -max_total_time="$seconds" -print_final_stats=1 \
        >>"logs/$name.log" 2>&1 || echo "== $name: exited $? (see artifacts/$name)" | tee -a "logs/$name.log"
done
