#!/usr/bin/env bash
# HTTPS throughput: makiatto vs nginx over TLS on loopback, the same
# certificate (ECDSA P-256, from a CA made here) and files, h2load
# (nghttp2-client) with the same threads and connections; runs alternate.
# Goals (issue 12): >= 1.3x nginx's req/s on 1 KiB over h2 and over
# HTTP/1.1, >= 1.0x on 1 MiB, >= 1.0x nginx's full handshakes/s.
#   usage: bench/https.sh [seconds-per-run] [rounds]
# SPECS="h2 1k.bin,close 1k.bin" runs only those (modes h2, h1, close).
# Full handshakes: h2load over HTTP/1.1 with `Connection: close`, so each
# request is a new connection. h2load resumes sessions where it can, so
# both servers have resumption off (nginx: session cache and tickets;
# makiatto: `tls_resumption = false`).
source "$(dirname "$0")/lib.sh"
need nginx h2load curl b3sum openssl
DUR=${1:-8}
ROUNDS=${2:-3}
build_release

WORK=$(mktemp -d /tmp/maki-bench-https.XXXXXX)
cleanup() {
    [ -n "${NODE_PID:-}" ] && kill "$NODE_PID" 2>/dev/null || true
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/site"
head -c 1024 /dev/urandom >"$WORK/site/1k.bin"
head -c 1048576 /dev/urandom >"$WORK/site/1m.bin"
echo ok >"$WORK/site/index.html"

# One CA, one leaf for bench.test (P-256), used by both servers.
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/ca.key" 2>/dev/null
openssl req -x509 -new -key "$WORK/ca.key" -subj "/CN=bench CA" -days 2 -out "$WORK/ca.pem" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/key.pem" 2>/dev/null
openssl req -new -key "$WORK/key.pem" -subj "/CN=bench.test" -out "$WORK/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:bench.test\n' >"$WORK/san.ext"
openssl x509 -req -in "$WORK/leaf.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
    -days 2 -extfile "$WORK/san.ext" -out "$WORK/cert.pem" 2>/dev/null

# The node trusts the bench CA as its only root (rustls-native-certs reads
# SSL_CERT_FILE), so it takes the upload.
export SSL_CERT_FILE=$WORK/ca.pem
# No resumption on either server: h2load resumes the sessions it can.
export NODE_TOML="tls_resumption = false"
start_node "$WORK" bench.test "$WORK/site"
NODE_HTTPS=$(sed -n 's/.*https=\([^ ]*\).*/\1/p' "$WORK/node.ready")
"$BIN/maki" cert set bench.test --cert "$WORK/cert.pem" --key "$WORK/key.pem" >/dev/null
unset SSL_CERT_FILE

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
        listen 127.0.0.1:$NGINX_PORT ssl http2;
        server_name bench.test;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        root $WORK/site;
        etag on;
    }
}
CONF
chmod -R a+rX "$WORK" # nginx workers run unprivileged
nginx -c "$WORK/nginx.conf" -p "$WORK"
NODE_PORT=${NODE_HTTPS##*:}

# The certificate reaches the edge within a second or two of the upload.
for _ in $(seq 50); do
    curl -s --cacert "$WORK/ca.pem" --resolve "bench.test:$NODE_PORT:127.0.0.1" \
        "https://bench.test:$NODE_PORT/index.html" >/dev/null && break
    sleep 0.2
done
# Both must answer 200 with the same bytes over verified TLS.
for f in 1k.bin 1m.bin; do
    a=$(curl -sf --cacert "$WORK/ca.pem" --resolve "bench.test:$NODE_PORT:127.0.0.1" "https://bench.test:$NODE_PORT/$f" | b3sum --no-names)
    b=$(curl -sf --cacert "$WORK/ca.pem" --resolve "bench.test:$NGINX_PORT:127.0.0.1" "https://bench.test:$NGINX_PORT/$f" | b3sum --no-names)
    c=$(b3sum --no-names "$WORK/site/$f")
    if [ "$a" != "$c" ] || [ "$b" != "$c" ]; then
        echo "$f: servers do not return the file over TLS (makiatto $a, nginx $b, file $c)" >&2
        exit 1
    fi
done

# run PORT MODE FILE: req/s of one h2load run (MODE: h2, h1 or close).
run() {
    local port=$1 mode=$2 file=$3 args=()
    case $mode in
        h2) args=(-m 10 -D "$DUR" --warm-up-time=1) ;;
        h1) args=(--h1 -D "$DUR" --warm-up-time=1) ;;
        # h2load's timed mode does not end with `Connection: close`: a
        # count instead (HANDSHAKES, 20000 by default).
        close) args=(--h1 -H "Connection: close" -n "${HANDSHAKES:-20000}") ;;
    esac
    local out
    out=$(timeout $((DUR * 6 + 60)) h2load -t2 -c64 "${args[@]}" \
        --connect-to="127.0.0.1:$port" "https://bench.test:$port/$file" 2>&1)
    # Every request must have succeeded, or the number means nothing.
    if ! grep -q " 0 failed, 0 errored" <<<"$out"; then
        echo "h2load $mode $file on $port had failures:" >&2
        echo "$out" >&2
        exit 1
    fi
    awk '/^finished in/ {print $4}' <<<"$out"
}

cipher() { # PORT
    h2load -n1 -c1 --connect-to="127.0.0.1:$1" "https://bench.test:$1/1k.bin" 2>&1 |
        awk -F': ' '/^Cipher|^TLS Protocol|^Server Temp Key/ {printf "%s ", $2}'
}
echo "# h2load -t2 -c64 -D${DUR}s, $ROUNDS alternating rounds, $(nproc) cores; $(date -u +%F)"
echo "#   makiatto: $(cipher "$NODE_PORT")"
echo "#   nginx:    $(cipher "$NGINX_PORT")"
# SPECS="close 1k.bin" runs one of them only.
IFS=, read -r -a specs <<<"${SPECS:-h2 1k.bin,h1 1k.bin,h2 1m.bin,h1 1m.bin,close 1k.bin}"
for spec in "${specs[@]}"; do
    read -r mode f <<<"$spec"
    ns=(); ms=()
    for r in $(seq "$ROUNDS"); do
        n=$(run "$NGINX_PORT" "$mode" "$f")
        m=$(run "$NODE_PORT" "$mode" "$f")
        echo "  $mode $f round $r: nginx $n req/s, makiatto $m req/s, ratio $(python3 -c "print(f'{$m/$n:.2f}')")x"
        ns+=("$n"); ms+=("$m")
    done
    python3 - "$mode $f" "${ns[*]}" "${ms[*]}" <<'PY'
import statistics, sys
what, ns, ms = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
ratios = [m / n for n, m in zip(ns, ms)]
print(f"{what}: nginx {statistics.mean(ns):,.0f} req/s, makiatto {statistics.mean(ms):,.0f} req/s (means); "
      f"ratio: median of rounds {statistics.median(ratios):.2f}x")
PY
done
