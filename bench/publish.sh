#!/usr/bin/env bash
# Publish scan speed: `maki publish --dry-run` (walk, hash, manifest) of a
# generated tree (10,000 files, 1 GiB) vs b3sum over the same files, then
# the re-run on the unchanged tree (the stat cache).
# Goals (issue 2): dry run <= 1.2x b3sum; unchanged re-run < 0.5 s.
#   usage: bench/publish.sh [runs]
source "$(dirname "$0")/lib.sh"
need b3sum
RUNS=${1:-3}
build_release

WORK=$(mktemp -d /tmp/maki-bench-publish.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
TREE=$WORK/tree
python3 - "$TREE" <<'PY'
import os, sys, random
root = sys.argv[1]
rng = random.Random(42)
# 9,900 small files (4-60 KiB, ~320 MiB) and 100 large ones (~7 MiB, ~700 MiB).
sizes = [rng.randint(4 << 10, 60 << 10) for _ in range(9900)]
rest = (1 << 30) - sum(sizes)
sizes += [rest // 100] * 100
for i, size in enumerate(sizes):
    d = os.path.join(root, f"d{i % 100:02d}", f"e{i % 7}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.bin"), "wb") as f:
        f.write(os.urandom(size))
PY
echo "# tree: $(find "$TREE" -type f | wc -l) files, $(du -sh --apparent-size "$TREE" | cut -f1); $(nproc) cores; $(date -u +%F)"
export MAKI_HOME=$WORK/home
# Warm the page cache so both read from memory.
find "$TREE" -type f -print0 | xargs -0 cat >/dev/null

best() { sort -n | head -1; }
time_it() { # command... → seconds
    local s e
    s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N)
    python3 -c "print(f'{$e - $s:.3f}')"
}
b3=(); cold=(); warm=()
for r in $(seq "$RUNS"); do
    b3+=("$(cd "$TREE" && time_it sh -c 'find . -type f -print0 | xargs -0 b3sum')")
    rm -rf "$MAKI_HOME/cache"
    cold+=("$(time_it "$BIN/maki" publish "$TREE" --site bench.test --dry-run)")
    warm+=("$(time_it "$BIN/maki" publish "$TREE" --site bench.test --dry-run)")
done
B=$(printf '%s\n' "${b3[@]}" | best); C=$(printf '%s\n' "${cold[@]}" | best); W=$(printf '%s\n' "${warm[@]}" | best)
echo "b3sum (find | xargs b3sum): runs ${b3[*]} s, best $B s"
echo "maki publish --dry-run (no cache): runs ${cold[*]} s, best $C s"
echo "maki publish --dry-run (unchanged, cached): runs ${warm[*]} s, best $W s"
python3 -c "print(f'ratio dry-run / b3sum: {$C / $B:.2f}x (goal <= 1.2x); unchanged re-run {$W:.3f} s (goal < 0.5 s)')"
