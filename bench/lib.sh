# Shared helpers for the benchmark scripts. Source it; do not run it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$ROOT/target/release

need() {
    for c in "$@"; do
        command -v "$c" >/dev/null || {
            echo "missing $c: apt-get install -y nginx-light wrk b3sum" >&2
            exit 1
        }
    done
}

build_release() {
    (cd "$ROOT" && cargo build --release --workspace --bins -q)
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_ready FILE: until a node wrote its ready line there (30 s at most).
wait_ready() {
    for _ in $(seq 300); do
        grep -q '^ready' "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "node did not start: $(cat "$1" 2>/dev/null)" >&2
    exit 1
}

# first_node DIR NAME: a fresh network of one release node on loopback, its
# data in DIR/NAME, ready line in DIR/NAME.ready, admin key in DIR/home.
# Sets NODE_PID, NODE_HTTP, MAKI_NODE, MAKI_HOME.
first_node() {
    local dir=$1 name=$2
    export MAKI_HOME=$dir/home
    mkdir -p "$MAKI_HOME"
    local key
    key=$("$BIN/maki" keys 2>/dev/null)
    "$BIN/makiatto" init --data-dir "$dir/$name" --admin "$key" --http 127.0.0.1:0 --https 127.0.0.1:0 --p2p 127.0.0.1:0 >/dev/null
    # NODE_TOML: settings for makiatto.toml, one `key = value` per line
    # (init wrote every key: each is replaced).
    local line k
    while IFS= read -r line; do
        [ -z "$line" ] && continue
        k=${line%% =*}
        sed -i "s|^$k = .*|$line|" "$dir/$name/makiatto.toml"
    done <<<"${NODE_TOML:-}"
    MAKIATTO_LOG=warn "$BIN/makiatto" run --data-dir "$dir/$name" >"$dir/$name.ready" 2>"$dir/$name.log" &
    NODE_PID=$!
    wait_ready "$dir/$name.ready"
    NODE_HTTP=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$dir/$name.ready")
    export MAKI_NODE
    MAKI_NODE=$(sed -n 's/.*ticket=\([^ ]*\).*/\1/p' "$dir/$name.ready")
}

# start_node DIR SITE SITE_DIR: a release node on loopback with SITE published.
# Sets NODE_PID, NODE_HTTP, MAKI_NODE, MAKI_HOME.
start_node() {
    local dir=$1 site=$2 site_dir=$3
    first_node "$dir" node
    "$BIN/maki" site add "$site" >/dev/null
    "$BIN/maki" publish "$site_dir" --site "$site" >/dev/null 2>&1
}
