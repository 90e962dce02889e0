#!/usr/bin/env bash
# Distribution: from one `maki publish --wait`, the time until all N nodes
# serve a new site of SIZE_MB incompressible megabytes, for N = 1 2 4 6;
# against rsync pushing the same folder from one origin to each node in
# turn (how Makiatto 0.6 distributes). rsync runs as a TCP daemon on
# loopback without encryption, which favours it (0.6 used SSH).
#
# On loopback all nodes share this machine's cores and disk, so this shows
# the shape, not the goal: "flat in N, within 1.5x of a single transfer at
# N = 6" is judged in the multi-host lab with per-host bandwidth limits.
#
# Then, on the same network, a one-file change: how long after `maki
# publish` returned the last node serves it (goal: within 1 s on loopback).
#
# usage: bench/distribute.sh [SIZE_MB] [NODE_COUNTS...]
source "$(dirname "$0")/lib.sh"
need rsync python3
SIZE_MB=${1:-200}
shift || true
COUNTS=${*:-1 2 4 6}
build_release

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

site=$work/site
mkdir -p "$site"
files=$((SIZE_MB / 2))
for i in $(seq "$files"); do
    head -c 2097152 /dev/urandom >"$site/f$i.bin"
done
echo '<h1>bench</h1>' >"$site/index.html"

now() { python3 -c 'import time; print(time.monotonic())'; }

# network N DIR: N release nodes (the first inits, the rest join by invite).
network() {
    local n=$1 dir=$2
    first_node "$dir" n1
    pids+=("$NODE_PID")
    for i in $(seq 2 "$n"); do
        local t
        t=$("$BIN/maki" invite 2>/dev/null)
        MAKIATTO_LOG=warn "$BIN/makiatto" join "$t" --data-dir "$dir/n$i" --http 127.0.0.1:0 --https 127.0.0.1:0 --p2p 127.0.0.1:0 \
            >"$dir/n$i.ready" 2>"$dir/n$i.log" &
        pids+=($!)
        wait_ready "$dir/n$i.ready"
    done
    "$BIN/maki" site add bench.test >/dev/null
}

stop_network() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}

# rsync N DIR: a daemon with N modules; push the site to each in turn.
rsync_push() {
    local n=$1 dir=$2 port
    port=$(free_port)
    {
        echo "use chroot = no"
        echo "uid = $(id -u)"
        echo "gid = $(id -g)"
        echo "pid file = $dir/rsyncd.pid"
        for i in $(seq "$n"); do
            mkdir -p "$dir/dst$i"
            printf '[n%s]\n path = %s\n read only = no\n' "$i" "$dir/dst$i"
        done
    } >"$dir/rsyncd.conf"
    rsync --daemon --no-detach --address 127.0.0.1 --port "$port" --config "$dir/rsyncd.conf" &
    pids+=($!)
    sleep 0.3
    local t0 t1
    t0=$(now)
    for i in $(seq "$n"); do
        rsync -a "$site/" "rsync://127.0.0.1:$port/n$i/"
    done
    t1=$(now)
    stop_network
    python3 -c "print(f'{$t1 - $t0:.2f}')"
}

echo "site: $files files, $SIZE_MB MB incompressible"
printf '%4s  %12s  %12s  %14s  %12s  %16s\n' N makiatto_s rsync_s vs_single_x vs_rsync_x one_file_all_s
single=""
for n in $COUNTS; do
    dir=$work/net$n
    mkdir -p "$dir"
    network "$n" "$dir"
    t0=$(now)
    "$BIN/maki" publish "$site" --site bench.test --wait --timeout 30m >"$dir/publish.out" 2>&1
    t1=$(now)
    mk=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
    [ -z "$single" ] && single=$mk
    echo "<h1>changed</h1>" >"$site/index.html"
    "$BIN/maki" publish "$site" --site bench.test --wait --timeout 1m >"$dir/change.out" 2>&1
    one=$(sed -n 's/.*serves it after \([0-9.]*\)s/\1/p' "$dir/change.out" | sort -n | tail -1)
    echo '<h1>bench</h1>' >"$site/index.html"
    stop_network
    rs=$(rsync_push "$n" "$dir")
    printf '%4s  %12s  %12s  %14s  %12s  %16s\n' "$n" "$mk" "$rs" \
        "$(python3 -c "print(f'{$mk / $single:.2f}')")" \
        "$(python3 -c "print(f'{$mk / $rs:.2f}')")" "$one"
    rm -rf "$dir"
done
