#!/usr/bin/env bash
# A node whose records hold SITES sites (each with a head whose manifest it
# holds, so replication is idle) and NODES member records, all signed and
# taken in through the normal record path (node/examples/scale_fixture.rs).
# Measures start time and memory, an idle replication pass, `maki sites`
# and `maki nodes`, and a sync with a second such node that differs by a
# couple of records, then by 1,000 (time and bytes on the wire).
# Goals (issue 9): start < 2 s, idle pass < 5 ms, 1-record sync < 50 ms and
# < 16 KB, RSS < 250 MB.
#   usage: bench/scale.sh [sites] [nodes]
source "$(dirname "$0")/lib.sh"
SITES=${1:-10000}
NODES=${2:-500}
(cd "$ROOT" && cargo build --release -q --workspace --bins && cargo build --release -q -p makiatto --example scale_fixture)
FIXTURE=$ROOT/target/release/examples/scale_fixture

W=$(mktemp -d /tmp/maki-bench-scale.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
export MAKI_HOME=$W/home
mkdir -p "$MAKI_HOME"
ADMIN=$("$BIN/maki" keys 2>/dev/null)
"$BIN/makiatto" init --data-dir "$W/a" --admin "$ADMIN" --http 127.0.0.1:0 --https 127.0.0.1:0 --p2p 127.0.0.1:0 >/dev/null
t0=$(date +%s.%N)
"$FIXTURE" "$W/a" "$MAKI_HOME/key" "$SITES" "$NODES" >"$W/fixture.txt"
t1=$(date +%s.%N)
# Fixed p2p ports: B must find A at the address A's record names.
sed -i "s/^p2p = .*/p2p = \"127.0.0.1:$(free_port)\"/" "$W/a/makiatto.toml"

ms() { python3 -c "print(round(($2 - $1) * 1000, 1))" "$1" "$2" 2>/dev/null || awk "BEGIN{print ($2-$1)*1000}"; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
export NO_COLOR=1
LOG="info,iroh=warn,iroh_blobs=warn,makiatto::replicate=debug,makiatto::sync=debug"
# start NAME: runs the node in $W/NAME; sets PID and START_MS.
start() {
    local s e
    s=$(date +%s.%N)
    MAKIATTO_LOG=$LOG "$BIN/makiatto" run --data-dir "$W/$1" >"$W/$1.ready" 2>"$W/$1.log" &
    PID=$!
    PIDS+=("$PID")
    wait_ready "$W/$1.ready"
    e=$(date +%s.%N)
    START_MS=$(ms "$s" "$e")
}
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }
median3() { sort -n | sed -n 2p; }
timed() { # timed CMD...: median of 3 runs, in ms
    for _ in 1 2 3; do
        local s e
        s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N)
        ms "$s" "$e"
    done | median3
}
field() { sed 's/\x1b\[[0-9;]*m//g' | sed -n "s/.* $1=\([0-9]*\).*/\1/p" | head -1; }

echo "# $SITES sites, $NODES members; $(nproc) cores; $(date -u +%F)"
echo "fixture: $(cat "$W/fixture.txt") in $(ms "$t0" "$t1") ms"

start a
A=$PID
echo "start: $START_MS ms (goal < 2000)"
sleep 3
echo "rss: $(rss_mb "$A") MB (goal < 250)"
export MAKI_NODE
MAKI_NODE=$(sed -n 's/.*ticket=\([^ ]*\).*/\1/p' "$W/a.ready")
# Passes run at start (beside the start syncs) and on every change; the
# quietest one is the cost of a pass itself.
sleep 2
# Each new record wakes a pass; several give a quiet one to report.
for i in 1 2 3 4 5 6; do
    "$BIN/maki" site add "idle-pass-$i.scale.test" >/dev/null 2>&1 || true
    sleep 0.5
done
sleep 1
passes=$(sed 's/\x1b\[[0-9;]*m//g' "$W/a.log" | grep "replication pass" | sed -n 's/.* elapsed_us=\([0-9]*\).*/\1/p' | sort -n)
echo "replication pass over every site: min $(echo "$passes" | head -1 | awk '{print $1/1000}') ms, max $(echo "$passes" | tail -1 | awk '{print $1/1000}') ms of $(echo "$passes" | wc -l) (goal < 5)"
echo "maki sites: $(timed "$BIN/maki" sites) ms ($("$BIN/maki" sites | wc -l) lines)"
echo "maki nodes: $(timed "$BIN/maki" nodes) ms ($("$BIN/maki" nodes | wc -l) lines)"

# B: a copy of A (A's own record included) as member 0, on its own port,
# syncing as often as allowed so that it picks A (among the unreachable
# members) soon.
stop "$A"
cp -r "$W/a" "$W/b"
"$FIXTURE" --member "$W/b" "$MAKI_HOME/key" 0
sed -i "s/^p2p = .*/p2p = \"127.0.0.1:$(free_port)\"/" "$W/b/makiatto.toml"
sed -i "s/^sync_interval = .*/sync_interval = \"100ms\"/" "$W/b/makiatto.toml"
start a
A=$PID
MAKI_NODE=$(sed -n 's/.*ticket=\([^ ]*\).*/\1/p' "$W/a.ready")
start b
B=$PID
echo "  (b started in $START_MS ms)"
# done_line N: the first successful sync after line N of b's log (with A:
# every other member is unreachable).
done_line() { tail -n +"$(($1 + 1))" "$W/b.log" | sed 's/\x1b\[[0-9;]*m//g' | grep "sync done" | head -1 || true; }
report() { # report WHAT LINE
    local us
    if [ -z "$2" ]; then echo "$1: not seen (B picks A 3 times in 501 per round)"; return; fi
    us=$(echo "$2" | field elapsed_us)
    echo "$1: $(python3 -c "print($us/1000)") ms, taken=$(echo "$2" | field taken) sent=$(echo "$2" | field sent), $(echo "$2" | field bytes_out) B out + $(echo "$2" | field bytes_in) B in"
}
for _ in $(seq 300); do [ -n "$(done_line 0)" ] && break; sleep 0.1; done
report "first sync after b started (holdings both ways)" "$(done_line 0)"
# Steady state: the next sync with nothing new, then one with one record.
n=$(wc -l <"$W/b.log")
for _ in $(seq 1200); do [ -n "$(done_line "$n")" ] && break; sleep 0.1; done
report "sync, nothing new (goal < 50 ms, < 16 KB)" "$(done_line "$n")"
# One record apart: a site added at A reaches B by gossip at once, so a
# sync carries it only when it wins that race; look at both sides' syncs.
na=$(wc -l <"$W/a.log"); nb=$(wc -l <"$W/b.log")
"$BIN/maki" site add one-more.scale.test >/dev/null
moved() { # moved NA NB PATTERN: the first sync in either log since then
    { tail -n +"$(($1 + 1))" "$W/a.log"; tail -n +"$(($2 + 1))" "$W/b.log"; } |
        sed 's/\x1b\[[0-9;]*m//g' | grep -E "sync done.*$3" | head -1 || true
}
for _ in $(seq 100); do [ -n "$(moved "$na" "$nb" "(taken|sent)=1 ")" ] && break; sleep 0.1; done
line=$(moved "$na" "$nb" "(taken|sent)=1 ")
if [ -n "$line" ]; then report "sync, 1 record apart (goal < 50 ms, < 16 KB)" "$line"
else echo "sync, 1 record apart: gossip delivered the record before any sync (see the sync with nothing new)"; fi

# 1,000 records more at A (500 sites and their heads), offline; B, still
# running, takes them in from A once A is back.
stop "$A"
"$FIXTURE" "$W/a" "$MAKI_HOME/key" 500 0 "$SITES" >/dev/null
na=0; nb=$(wc -l <"$W/b.log")
start a
A=$PID
for _ in $(seq 600); do [ -n "$(moved "$na" "$nb" "(taken|sent)=[0-9]{3,}")" ] && break; sleep 0.1; done
report "sync, 1,000 records apart" "$(moved "$na" "$nb" "(taken|sent)=[0-9]{3,}")"

# A new member joins a network of this size: the join brings only who the
# members are; every site's records come by its first sync, in frames of
# at most 4 MiB (a single frame would pass 16 MiB at 100,000 sites).
TICKET=$("$BIN/maki" invite 2>/dev/null)
s=$(date +%s.%N)
MAKIATTO_LOG=$LOG "$BIN/makiatto" join "$TICKET" --data-dir "$W/c" --http 127.0.0.1:0 --https 127.0.0.1:0 --p2p 127.0.0.1:0 >"$W/c.ready" 2>"$W/c.log" &
PIDS+=("$!")
wait_ready "$W/c.ready"
first=""
for _ in $(seq 1200); do
    first=$(sed 's/\x1b\[[0-9;]*m//g' "$W/c.log" | grep -E "(sync done|synced \(inbound\)).*taken=[0-9]{4,}" | head -1 || true)
    [ -n "$first" ] && break
    sleep 0.1
done
e=$(date +%s.%N)
echo "a new member's first sync: taken=$(echo "$first" | field taken) records, $(echo "$first" | field bytes_in) B in; joined and synced $(ms "$s" "$e") ms after the join began"
