#!/usr/bin/env bash
# Measures one secure-aggregation round of many clients against a separate
# release `tessera serve` on loopback: README's load figure (5,000 clients at
# d = 100,000). A benchmark, not part of CI: it takes minutes and ~10 GiB.
#
#   bash scripts/load-figure.sh                 # 5,000 clients, d = 100,000
#   CLIENTS=1000 DIM=10000 PARTS=1 bash scripts/load-figure.sh
#
# The clients are the load test (tests/tests/end_to_end/load.rs) split over PARTS
# processes. Reported: the round time (first join to last result, per part),
# the server's CPU seconds and peak RSS (GNU time), and the server's own
# per-stage times from its Prometheus endpoint (where the time goes).
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-5000}
DIM=${DIM:-100000}
PARTS=${PARTS:-4}
PORT=${PORT:-7411}
METRICS_PORT=$((PORT + 1))

[ -x /usr/bin/time ] || { echo "needs GNU time at /usr/bin/time" >&2; exit 1; }
need_fds=$((CLIENTS + 256))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need_fds" ]; then
    ulimit -n "$need_fds" 2>/dev/null || {
        echo "the server needs $need_fds file descriptors: raise ulimit -n" >&2
        exit 1
    }
fi

echo "building the release server and the load test ..." >&2
cargo build --release --locked --bin tessera
cargo test --locked -p tessera-tests --test load --no-run 2>&1 | tail -1 >&2

work=$(mktemp -d)
trap 'pkill -P "$server" 2>/dev/null; kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
/usr/bin/time -v -o "$work/time.txt" target/release/tessera serve \
    --listen "127.0.0.1:$PORT" --data-dir "$work/data" --dim "$DIM" \
    --min-clients "$CLIENTS" --max-clients "$CLIENTS" --graph auto \
    --insecure-dev --stage-timeout-ms 600000 \
    --metrics-listen "127.0.0.1:$METRICS_PORT" >"$work/serve.out" 2>"$work/serve.err" &
server=$!
for _ in $(seq 100); do
    grep -q "listening on" "$work/serve.out" 2>/dev/null && break
    sleep 0.1
done
grep -q "listening on" "$work/serve.out" || { cat "$work/serve.err" >&2; exit 1; }

echo "running $CLIENTS clients at d = $DIM in $PARTS processes ..." >&2
pids=()
for i in $(seq 0 $((PARTS - 1))); do
    TESSERA_LOAD_SERVER="http://127.0.0.1:$PORT" TESSERA_LOAD_CLIENTS="$CLIENTS" \
        TESSERA_LOAD_DIM="$DIM" TESSERA_LOAD_PART="$i/$PARTS" \
        cargo test --locked -q -p tessera-tests --test load -- --nocapture \
        >"$work/part$i.log" 2>&1 &
    pids+=($!)
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=1; done
grep -h "^load:" "$work"/part*.log || true
if [ "$failed" = 1 ]; then
    tail -n 20 "$work"/part*.log >&2
    exit 1
fi

metrics=$(curl -s "http://127.0.0.1:$METRICS_PORT/metrics" || true)
# $server is GNU time; the server is its child.
pkill -INT -P "$server" || true
wait "$server" || true
echo "server:"
grep -E "User time|System time|Maximum resident" "$work/time.txt" | sed 's/^\s*/  /'
echo "server stage times (seconds, from tessera_stage_seconds_sum):"
echo "$metrics" | grep '^tessera_stage_seconds_sum' | sed 's/^/  /'
