#!/usr/bin/env bash
# A large site going live next to a small one: the node's memory per entry,
# and the small site's latency while the large one is published (issue 8,
# finding 6). The anchor is the small site's own latency in the same run
# with nothing being published.
# Goals: p99 for the other site stays under 50 ms during the install; the
# memory per entry is measured and recorded in docs/benchmarks.md.
#   usage: bench/manifest.sh [files] [seconds]
source "$(dirname "$0")/lib.sh"
need wrk curl
FILES=${1:-200000}
DUR=${2:-10}
build_release

WORK=$(mktemp -d /tmp/maki-bench-manifest.XXXXXX)
cleanup() {
    [ -n "${NODE_PID:-}" ] && kill "$NODE_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# FILES files of 16 bytes each, in folders of 1,000; every file differs,
# so each entry names its own blob, as in a real site.
python3 - "$WORK/big" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:04d}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"page-{i:07d}.html"), "w") as f:
        f.write(f"<p>{i:012d}</p>")
PY
mkdir -p "$WORK/small"
echo "small" >"$WORK/small/index.html"

start_node "$WORK" small.test "$WORK/small"
"$BIN/maki" site add big.test >/dev/null
rss() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$NODE_PID/status"; }
p99() { sed -n 's/^ *99% *\([0-9.]*\)\(us\|ms\|s\)$/\1 \2/p' "$1" |
    awk '{ if ($2=="us") print $1/1000; else if ($2=="s") print $1*1000; else print $1 }'; }
URL="http://$NODE_HTTP/"

echo "# $FILES files; $(nproc) cores; $(date -u +%F)"
# Anchor: the small site alone.
wrk -t1 -c8 -d"${DUR}s" --latency -H "Host: small.test" "$URL" >"$WORK/alone.txt"
base_p99=$(p99 "$WORK/alone.txt")
before=$(rss)

# The same load for as long as the large site takes to publish and go
# live (wrk prints its summary when interrupted).
wrk -t1 -c8 -d3600s --latency -H "Host: small.test" "$URL" >"$WORK/during.txt" &
WRK=$!
sleep 1
start=$(date +%s.%N)
"$BIN/maki" publish "$WORK/big" --site big.test >"$WORK/publish.txt" 2>&1
live=$(date +%s.%N)
sleep 1
kill -INT "$WRK" 2>/dev/null || true
wait "$WRK" || true
during_p99=$(p99 "$WORK/during.txt")
curl -sf -H "Host: big.test" "$URL/d0000/page-0000000.html" >/dev/null || { echo "big.test is not served" >&2; exit 1; }
sleep 3
after=$(rss)

# The steady state: the same node restarted serves both sites from disk,
# without the garbage a publish leaves in the allocator.
kill "$NODE_PID"; wait "$NODE_PID" 2>/dev/null || true
MAKIATTO_LOG=warn "$BIN/makiatto" run --data-dir "$WORK/node" >"$WORK/node.ready" 2>>"$WORK/node.log" &
NODE_PID=$!
wait_ready "$WORK/node.ready"
NODE_HTTP=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$WORK/node.ready")
curl -sf -H "Host: big.test" "http://$NODE_HTTP/d0000/page-0000000.html" >/dev/null || { echo "big.test is not served after a restart" >&2; exit 1; }
sleep 3
restarted=$(rss)
# And a fresh node with the small site only, for the baseline of a restart.
kill "$NODE_PID"; wait "$NODE_PID" 2>/dev/null || true
first_node "$WORK" bare
"$BIN/maki" site add small.test >/dev/null
"$BIN/maki" publish "$WORK/small" --site small.test >/dev/null 2>&1
sleep 3
bare=$(rss)

printf "publish of %d files took %.1f s\n" "$FILES" "$(echo "$live - $start" | bc)"
printf "small.test p99: %.2f ms alone, %.2f ms during the install (goal < 50 ms; ratio %.2fx)\n" \
    "$base_p99" "$during_p99" "$(echo "$during_p99 / $base_p99" | bc -l)"
printf "node RSS: %.0f MiB before, %.0f MiB after the publish: %.0f bytes per entry (with the publish's garbage)\n" \
    "$(echo "$before / 1048576" | bc -l)" "$(echo "$after / 1048576" | bc -l)" \
    "$(echo "($after - $before) / $FILES" | bc -l)"
printf "restarted: %.0f MiB, vs %.0f MiB for a node without the large site: %.0f bytes per entry served\n" \
    "$(echo "$restarted / 1048576" | bc -l)" "$(echo "$bare / 1048576" | bc -l)" \
    "$(echo "($restarted - $bare) / $FILES" | bc -l)"
