#!/usr/bin/env bash
# Distribution across real hosts (the lab: network namespaces on a bridge,
# each host's link limited to RATE Mbit/s each way with tbf, the WireGuard
# mesh on): for N = 2 4 6 8, the time from the end of a publish until all N
# serve, for a site of SITE_MB in many files and for one file of BIG_MB;
# beside it, measured in the same run, one host's transfer of the same
# bytes at that rate (the physical limit) and rsync pushing the site from
# the origin to each host in turn (Makiatto 0.6's way) at N = 2 and 6.
# CPU use of the whole machine is printed next to each result.
# Goals (issue 10), at N = 6: site <= 1.3x, one file <= 1.5x the single
# transfer. Every two hosts are RTT ms apart (tc netem is missing from these
# kernels: each host's traffic goes through maki-lab-delay, a TUN device).
# Root only.
# With REPEAT > 1 the site is published that many times per N (each a site
# of its own bytes) and the median is printed: one run varies by ~10 %.
# MAKI_LAB_LOGS=DIR keeps each node's log after the site runs (set
# MAKI_TEST_LOG=makiatto::replicate=debug for every piece fetched).
#   usage: bench/lab-distribute.sh [RATE] [SITE_MB] [FILES] [BIG_MB] [NODES] [RSYNC_NODES] [RTT] [REPEAT]
source "$(dirname "$0")/lib.sh"
need rsync curl tc
[ "$(id -u)" = 0 ] || { echo "the lab needs root" >&2; exit 1; }
RATE=${1:-20}
SITE_MB=${2:-50}
FILES=${3:-500}
BIG_MB=${4:-200}
NODES=${5:-2,4,6,8}
RSYNC=${6:-2,6}
RTT=${7:-20}
REPEAT=${8:-1}
build_release
"$BIN/maki-lab-distribute" --rate "$RATE" --rtt "$RTT" --repeat "$REPEAT" --site-mb "$SITE_MB" --files "$FILES" \
    --big-mb "$BIG_MB" --nodes "$NODES" --rsync "$RSYNC"
