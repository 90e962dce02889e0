#!/usr/bin/env bash
# GeoDNS: makiatto's nameserver vs gdnsd (geoip plugin) answering the same
# geo name from the same three nodes and the same geo database, on
# loopback, dnsperf alternating between them.
#   usage: bench/dns.sh [seconds-per-run] [rounds] [fixed-rate-qps]
# Prints, per round: queries/s at saturation with and without ECS, and p99
# latency at a fixed rate both reach (dnsperf -Q), then the medians and the
# ratios. Goals (issue 11): >= 1.0x gdnsd's queries/s; p99 no worse.
# Then DNSSEC: the site signed, makiatto's queries/s with the DO bit set
# against the same queries without it, for the geo name (signatures
# cached) and for 100,000 made-up names (NXDOMAIN, proved by the zone's
# NSEC3 chain, whose signatures are cached too). Goal: signed >= 0.7x
# unsigned.
# dnsperf takes one of the two cores: compare the ratios, not the numbers.
# ONLY=p99 measures only the p99 latency (more rounds for the same time).
source "$(dirname "$0")/lib.sh"
command -v gdnsd >/dev/null && command -v dnsperf >/dev/null || {
    echo "missing gdnsd or dnsperf: apt-get install -y gdnsd dnsperf" >&2
    exit 1
}
DUR=${1:-8}
ROUNDS=${2:-3}
RATE=${3:-20000}
build_release

WORK=$(mktemp -d /tmp/maki-bench-dns.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# set_key FILE KEY VALUE: one setting of a makiatto.toml.
set_key() {
    python3 - "$@" <<'PY'
import sys
path, key, value = sys.argv[1:]
lines = open(path).read().splitlines()
out, found = [], False
for l in lines:
    if l.split("=")[0].strip() == key:
        out.append(f"{key} = {value}"); found = True
    else:
        out.append(l)
if not found:
    out.insert(2, f"{key} = {value}")
open(path, "w").write("\n".join(out) + "\n")
PY
}

"$ROOT/target/release/maki-geo-fixture" "$WORK/geo.mmdb"
DNS_PORT=$(free_port)
GD_PORT=$(free_port)

# Three nodes: Frankfurt, New York, Sydney; the first is the nameserver.
export MAKI_HOME=$WORK/home
mkdir -p "$MAKI_HOME" "$WORK/site"
echo '<h1>dns bench</h1>' >"$WORK/site/index.html"
KEY=$("$BIN/maki" keys 2>/dev/null)
"$BIN/makiatto" init --data-dir "$WORK/n1" --admin "$KEY" --http 127.0.0.1:0 --https 127.0.0.1:0 --p2p 127.0.0.1:0 \
    --dns "127.0.0.1:$DNS_PORT" --public-ip 192.0.2.1 >/dev/null
set_key "$WORK/n1/makiatto.toml" location "[50.11, 8.68]"
set_key "$WORK/n1/makiatto.toml" dns_answers 1
# DNS over TLS at a free port too (853 needs root).
set_key "$WORK/n1/makiatto.toml" dot '"127.0.0.1:0"'
# DNS_THREADS=N: the nameserver's UDP workers (default: one per core).
[ -n "${DNS_THREADS:-}" ] && set_key "$WORK/n1/makiatto.toml" dns_threads "$DNS_THREADS"
"$BIN/makiatto" geoip install --data-dir "$WORK/n1" "$WORK/geo.mmdb" >/dev/null
MAKIATTO_LOG=warn "$BIN/makiatto" run --data-dir "$WORK/n1" >"$WORK/n1.ready" 2>"$WORK/n1.log" &
pids+=($!)
wait_ready "$WORK/n1.ready"
export MAKI_NODE
MAKI_NODE=$(sed -n 's/.*ticket=\([^ ]*\).*/\1/p' "$WORK/n1.ready")
i=2
for place in "40.71 -74.01" "-33.87 151.21"; do
    read -r lat lon <<<"$place"
    t=$("$BIN/maki" invite 2>/dev/null)
    MAKIATTO_LOG=warn "$BIN/makiatto" join "$t" --data-dir "$WORK/n$i" --http 127.0.0.1:0 --https 127.0.0.1:0 \
        --p2p 127.0.0.1:0 --lat "$lat" --lon "$lon" --public-ip "192.0.2.$i" \
        >"$WORK/n$i.ready" 2>"$WORK/n$i.log" &
    pids+=($!)
    wait_ready "$WORK/n$i.ready"
    i=$((i + 1))
done
"$BIN/maki" site add geo.test >/dev/null
"$BIN/maki" publish "$WORK/site" --site geo.test --wait >/dev/null

# gdnsd: the same three places and addresses, the same database.
mkdir -p "$WORK/gdnsd/zones" "$WORK/gdnsd/geoip"
cp "$WORK/geo.mmdb" "$WORK/gdnsd/geoip/geo.mmdb"
cat >"$WORK/gdnsd/config" <<CONF
options => { listen => [ 127.0.0.1:$GD_PORT ] }
plugins => {
  geoip => {
    maps => {
      world => {
        geoip2_db => geo.mmdb
        datacenters => [ fra, nyc, syd ]
        auto_dc_coords => { fra => [ 50.11, 8.68 ], nyc => [ 40.71, -74.01 ], syd => [ -33.87, 151.21 ] }
        auto_dc_limit => 1
      }
    }
    resources => {
      www => {
        map => world
        service_types => up
        dcmap => { fra => 192.0.2.1, nyc => 192.0.2.2, syd => 192.0.2.3 }
      }
    }
  }
}
CONF
cat >"$WORK/gdnsd/zones/geo.test" <<ZONE
\$TTL 3600
@ SOA ns1 hostmaster 1 3600 600 1209600 60
@ NS ns1
ns1 A 127.0.0.1
@ 60 DYNA geoip!www
ZONE
gdnsd -c "$WORK/gdnsd" start >"$WORK/gdnsd.log" 2>&1 &
pids+=($!)

# Both answer the geo name for a placed subnet alike before we measure.
for _ in $(seq 100); do
    a=$(dig @127.0.0.1 -p "$DNS_PORT" +short +subnet=10.7.0.0/24 geo.test A 2>/dev/null || true)
    b=$(dig @127.0.0.1 -p "$GD_PORT" +short +subnet=10.7.0.0/24 geo.test A 2>/dev/null || true)
    [ -n "$a" ] && [ "$a" = "$b" ] && break
    sleep 0.2
done
[ -n "$a" ] && [ "$a" = "$b" ] || {
    echo "the two do not agree: makiatto '$a', gdnsd '$b'" >&2
    exit 1
}
echo "both answer $a for 10.7.0.0/24"

printf 'geo.test A\n' >"$WORK/q.txt"
python3 -c "
import random
r = random.Random(7)
for _ in range(100000):
    print(''.join(r.choice('abcdefghijklmnopqrstuvwxyz0123456789') for _ in range(12)) + '.geo.test A')
" >"$WORK/nx.txt"
# ECS: family 1 (IPv4), source /24, scope 0, address 10.7.0.
ECS=(-E 8:000118000a0700)

qps() { # PORT [dnsperf args…]
    qps_of "$WORK/q.txt" "$@"
}
qps_of() { # QUERY-FILE PORT [dnsperf args…]
    local file=$1 port=$2
    shift 2
    dnsperf -s 127.0.0.1 -p "$port" -d "$file" -l "$DUR" -c 8 -q 500 "$@" 2>/dev/null |
        awk '/Queries per second/ {print int($4)}'
}
p99() { # PORT: the 99th percentile latency at RATE, in microseconds
    dnsperf -s 127.0.0.1 -p "$1" -d "$WORK/q.txt" -l "$DUR" -c 4 -Q "$RATE" -v "${ECS[@]}" 2>/dev/null |
        awk '/^> / {print $NF}' | sort -n |
        awk '{v[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%d\n", v[i]*1e6}'
}

declare -a M_PLAIN G_PLAIN M_ECS G_ECS M_P99 G_P99
if [ "${ONLY:-}" = p99 ]; then
    declare -a RATIOS
    for r in $(seq "$ROUNDS"); do
        # Who goes first takes turns.
        if [ $((r % 2)) = 1 ]; then
            G_P99+=("$(p99 "$GD_PORT")")
            M_P99+=("$(p99 "$DNS_PORT")")
        else
            M_P99+=("$(p99 "$DNS_PORT")")
            G_P99+=("$(p99 "$GD_PORT")")
        fi
        RATIOS+=("$(python3 -c "print(f'{${M_P99[-1]}/${G_P99[-1]}:.2f}')")")
        echo "round $r: p99 at $RATE/s ${M_P99[-1]} vs ${G_P99[-1]} us (makiatto vs gdnsd): ${RATIOS[-1]}x"
    done
    median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
    echo "median p99: makiatto $(median "${M_P99[@]}") us, gdnsd $(median "${G_P99[@]}") us; median of the ratios $(median "${RATIOS[@]}")x"
    exit 0
fi
for r in $(seq "$ROUNDS"); do
    M_PLAIN+=("$(qps "$DNS_PORT")")
    G_PLAIN+=("$(qps "$GD_PORT")")
    G_ECS+=("$(qps "$GD_PORT" "${ECS[@]}")")
    M_ECS+=("$(qps "$DNS_PORT" "${ECS[@]}")")
    G_P99+=("$(p99 "$GD_PORT")")
    M_P99+=("$(p99 "$DNS_PORT")")
    echo "round $r: qps plain ${M_PLAIN[-1]} vs ${G_PLAIN[-1]}, ECS ${M_ECS[-1]} vs ${G_ECS[-1]}; p99 at $RATE/s ${M_P99[-1]} vs ${G_P99[-1]} us (makiatto vs gdnsd)"
done

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
mp=$(median "${M_PLAIN[@]}") gp=$(median "${G_PLAIN[@]}")
me=$(median "${M_ECS[@]}") ge=$(median "${G_ECS[@]}")
m9=$(median "${M_P99[@]}") g9=$(median "${G_P99[@]}")
echo "median queries/s without ECS: makiatto $mp, gdnsd $gp: $(ratio "$mp" "$gp")x"
echo "median queries/s with ECS:    makiatto $me, gdnsd $ge: $(ratio "$me" "$ge")x"
echo "median p99 at $RATE/s with ECS: makiatto $m9 us, gdnsd $g9 us: $(ratio "$m9" "$g9")x of gdnsd's"

# DNSSEC: sign the site; answers without DO stay as they were.
"$BIN/maki" dns sign geo.test >/dev/null
for _ in $(seq 100); do
    dig @127.0.0.1 -p "$DNS_PORT" +dnssec geo.test DNSKEY 2>/dev/null | grep -q RRSIG && break
    sleep 0.2
done
declare -a S_GEO U_GEO S_NX U_NX
for r in $(seq "$ROUNDS"); do
    U_GEO+=("$(qps "$DNS_PORT" "${ECS[@]}")")
    S_GEO+=("$(qps "$DNS_PORT" "${ECS[@]}" -D)")
    U_NX+=("$(qps_of "$WORK/nx.txt" "$DNS_PORT")")
    S_NX+=("$(qps_of "$WORK/nx.txt" "$DNS_PORT" -D)")
    echo "round $r: qps signed vs unsigned: geo ${S_GEO[-1]} vs ${U_GEO[-1]}, made-up names ${S_NX[-1]} vs ${U_NX[-1]}"
done
sg=$(median "${S_GEO[@]}") ug=$(median "${U_GEO[@]}")
sn=$(median "${S_NX[@]}") un=$(median "${U_NX[@]}")
echo "median queries/s signed/unsigned, geo name with ECS: $sg / $ug: $(ratio "$sg" "$ug")x"
echo "median queries/s signed/unsigned, made-up names:    $sn / $un: $(ratio "$sn" "$un")x"
