#!/usr/bin/env bash
# HTTP throughput: makiatto vs nginx serving the same files on loopback.
# Same wrk threads/connections, runs alternate; prints req/s and the ratio.
# Goals (issue 2): >= 1.5x nginx for 1 KiB, >= 1.0x for 1 MiB. 16 MiB is
# past the memory cache (memory_cache_max_blob, 4 MiB): read from disk.
#   usage: bench/http.sh [seconds-per-run] [rounds]
# With BEFORE=DIR (the release binaries of another commit), a node of that
# build serves the same files too, and each round measures all three in
# turn: the change's ratio to the build before it, in one run.
source "$(dirname "$0")/lib.sh"
need nginx wrk curl b3sum
DUR=${1:-8}
ROUNDS=${2:-3}
build_release

WORK=$(mktemp -d /tmp/maki-bench-http.XXXXXX)
cleanup() {
    [ -n "${NODE_PID:-}" ] && kill "$NODE_PID" 2>/dev/null || true
    [ -n "${OLD_PID:-}" ] && kill "$OLD_PID" 2>/dev/null || true
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/site"
head -c 1024 /dev/urandom >"$WORK/site/1k.bin"
head -c 1048576 /dev/urandom >"$WORK/site/1m.bin"
head -c 16777216 /dev/urandom >"$WORK/site/16m.bin"
echo ok >"$WORK/site/index.html"

OLD_HTTP=""
if [ -n "${BEFORE:-}" ]; then
    # The other build first, in its own network and CLI home.
    mkdir -p "$WORK/before"
    (
        BIN=$BEFORE
        start_node "$WORK/before" bench.test "$WORK/site"
        echo "$NODE_PID $NODE_HTTP" >"$WORK/before.addr"
    )
    read -r OLD_PID OLD_HTTP <"$WORK/before.addr"
fi
start_node "$WORK" bench.test "$WORK/site"

NGINX_PORT=$(free_port)
cat >"$WORK/nginx.conf" <<CONF
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WORK/site;
        etag on;
    }
}
CONF
chmod -R a+rX "$WORK" # nginx workers run unprivileged
nginx -c "$WORK/nginx.conf" -p "$WORK"
sleep 0.5
# Both must answer 200 with the same bytes, or the comparison is meaningless.
for f in ${FILES:-1k.bin 1m.bin 16m.bin}; do
    a=$(curl -s -H "Host: bench.test" "http://$NODE_HTTP/$f" | b3sum --no-names)
    b=$(curl -s "http://127.0.0.1:$NGINX_PORT/$f" | b3sum --no-names)
    c=$(b3sum --no-names "$WORK/site/$f")
    o=$c
    [ -n "$OLD_HTTP" ] && o=$(curl -s -H "Host: bench.test" "http://$OLD_HTTP/$f" | b3sum --no-names)
    if [ "$a" != "$c" ] || [ "$b" != "$c" ] || [ "$o" != "$c" ]; then
        echo "$f: servers do not return the file (makiatto $a, nginx $b, before $o, file $c)" >&2
        exit 1
    fi
done

rps() { # URL HOST
    wrk -t2 -c64 -d"${DUR}s" -H "Host: $2" "$1" | awk '/Requests\/sec/ {print $2}'
}

echo "# wrk -t2 -c64 -d${DUR}s, $ROUNDS alternating rounds, $(nproc) cores; $(date -u +%F)"
for f in ${FILES:-1k.bin 1m.bin 16m.bin}; do
    # Warm both (page cache, memory cache).
    wrk -t1 -c1 -d1s -H "Host: bench.test" "http://$NODE_HTTP/$f" >/dev/null
    wrk -t1 -c1 -d1s "http://127.0.0.1:$NGINX_PORT/$f" >/dev/null
    [ -n "$OLD_HTTP" ] && wrk -t1 -c1 -d1s -H "Host: bench.test" "http://$OLD_HTTP/$f" >/dev/null
    ns=(); ms=(); os=()
    for r in $(seq "$ROUNDS"); do
        n=$(rps "http://127.0.0.1:$NGINX_PORT/$f" localhost)
        m=$(rps "http://$NODE_HTTP/$f" bench.test)
        line="  $f round $r: nginx $n req/s, makiatto $m req/s, ratio $(python3 -c "print(f'{$m/$n:.2f}')")x"
        if [ -n "$OLD_HTTP" ]; then
            o=$(rps "http://$OLD_HTTP/$f" bench.test)
            line="$line; before $o req/s, ratio $(python3 -c "print(f'{$o/$n:.2f}')")x"
            os+=("$o")
        fi
        echo "$line"
        ns+=("$n"); ms+=("$m")
    done
    # Rounds alternate, so each pair saw the same machine state; the median
    # of the paired ratios is robust to one noisy round on either side.
    python3 - "$f" "${ns[*]}" "${ms[*]}" "${os[*]:-}" <<'PY'
import statistics, sys
f, ns, ms = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
os_ = [float(x) for x in sys.argv[4].split()]
ratios = [m / n for n, m in zip(ns, ms)]
print(f"{f}: nginx {statistics.mean(ns):,.0f} req/s, makiatto {statistics.mean(ms):,.0f} req/s (means); "
      f"ratio: median of rounds {statistics.median(ratios):.2f}x, of means {statistics.mean(ms)/statistics.mean(ns):.2f}x")
if os_:
    before = [o / n for n, o in zip(ns, os_)]
    change = [m / o if o else float("inf") for m, o in zip(ms, os_)]
    print(f"{f}: before {statistics.mean(os_):,.0f} req/s; its ratio to nginx: median {statistics.median(before):.2f}x; "
          f"this build / before: median of rounds {statistics.median(change):.2f}x")
PY
done
