#!/usr/bin/env bash
# Latency tollgate and LiteLLM's proxy add over the same simulated upstream,
# in the same run: `tollgate bench` measures direct, tollgate (memory store,
# and Redis with REDIS=1) and LiteLLM (--target) at each rate, then searches
# the highest rate each holds. Repeated RUNS times; prints medians.
#
#   scripts/bench/gateway-vs-litellm.sh                  # 3 runs, memory store
#   REDIS=1 RUNS=3 scripts/bench/gateway-vs-litellm.sh   # also tollgate on Redis
#
# Settings (environment): RUNS=3 SECS=5 RATES=50,1000,5000 (50/s: a rate one
# LiteLLM worker still holds) SEARCH_P99_MS=50 SEARCH_FROM=25 SEARCH_SECS=2
# REDIS=0 LITELLM_WORKERS=1 LITELLM_VERSION= (pip spec suffix, e.g.
# ==1.106.2) PYTHON=python3 OUT=target/bench-litellm.
#
# The measurement runs in a network namespace of its own (`unshare -n`, only
# loopback up) when it can, so nothing in it can reach beyond 127.0.0.1.
# Everything it starts is stopped at the end; each run is bounded by the
# bench's timeouts (5 s per request, 20 s settling per endpoint).
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
RUNS=${RUNS:-3}
SECS=${SECS:-5}
RATES=${RATES:-50,1000,5000}
SEARCH_P99_MS=${SEARCH_P99_MS:-50}
SEARCH_SECS=${SEARCH_SECS:-2}
SEARCH_FROM=${SEARCH_FROM:-25}
REDIS=${REDIS:-0}
LITELLM_WORKERS=${LITELLM_WORKERS:-1}
OUT=${OUT:-$ROOT/target/bench-litellm}
VENV=$ROOT/target/litellm-venv
TOLLGATE=$ROOT/target/release/tollgate

if [[ "${TOLLGATE_BENCH_ISOLATED:-}" != 1 ]]; then
    # Outside the namespace: build and install (these need the network).
    cargo build --release -p tollgate-cli
    if [[ ! -x $VENV/bin/litellm ]]; then
        "${PYTHON:-python3}" -m venv "$VENV"
        "$VENV/bin/pip" install --quiet "litellm[proxy]${LITELLM_VERSION:-}"
    fi
    mkdir -p "$OUT"
    if unshare -n true 2>/dev/null; then
        exec unshare -n env TOLLGATE_BENCH_ISOLATED=1 "$0" "$@"
    fi
    echo "note: cannot create a network namespace; running on the host's loopback" >&2
    TOLLGATE_BENCH_ISOLATED=0
fi
if [[ "$TOLLGATE_BENCH_ISOLATED" == 1 ]]; then
    ip link set lo up
fi
ulimit -n 65536 2>/dev/null || true

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

free_port() {
    "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The simulated upstream that every path calls.
# Emptied first: a log left by an earlier run would name its port before this
# upstream has written its own.
: >"$OUT/upstream.log"
"$TOLLGATE" upstream-sim --port "$(free_port)" >"$OUT/upstream.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do grep -qs "simulated upstream on" "$OUT/upstream.log" && break; sleep 0.1; done
UPSTREAM=$(sed -n 's/^simulated upstream on //p' "$OUT/upstream.log")
[[ -n $UPSTREAM ]] || { echo "the simulated upstream did not start:" >&2; cat "$OUT/upstream.log" >&2; exit 1; }

STORE_ARGS=()
if [[ $REDIS == 1 ]]; then
    REDIS_PORT=$(free_port)
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no >"$OUT/redis.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    STORE_ARGS=(--store "redis://127.0.0.1:$REDIS_PORT")
fi

# LiteLLM's proxy: no database, no callbacks, local cost map, no telemetry.
LITELLM_PORT=$(free_port)
(
    cd "$ROOT/scripts/bench/litellm"
    export SIM_BASE_URL=$UPSTREAM LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR \
        LITELLM_TELEMETRY=False DISABLE_ADMIN_UI=True NO_DOCS=True
    exec "$VENV/bin/litellm" --config config.yaml --host 127.0.0.1 --port "$LITELLM_PORT" \
        --num_workers "$LITELLM_WORKERS"
) >"$OUT/litellm.log" 2>&1 &
PIDS+=($!)
LITELLM=http://127.0.0.1:$LITELLM_PORT
for i in $(seq 180); do
    curl -sf -m 1 "$LITELLM/health/liveliness" >/dev/null 2>&1 && break
    if [[ $i == 180 ]] || ! kill -0 "${PIDS[-1]}" 2>/dev/null; then
        echo "LiteLLM's proxy did not start:" >&2; tail -30 "$OUT/litellm.log" >&2; exit 1
    fi
    sleep 0.5
done
VERSION=$("$VENV/bin/pip" show litellm | sed -n 's/^Version: //p')
echo "LiteLLM $VERSION on $LITELLM ($LITELLM_WORKERS worker(s)); upstream $UPSTREAM; $RUNS runs"

TSV=$OUT/results.tsv
: >"$TSV"
for run in $(seq "$RUNS"); do
    echo; echo "=== run $run of $RUNS"
    CHECK=()
    [[ $run == 1 ]] && CHECK=(--check-limits)
    "$TOLLGATE" bench --upstream "$UPSTREAM" "${STORE_ARGS[@]}" \
        --target "litellm=$LITELLM/v1" --rates "$RATES" --secs "$SECS" \
        --search-p99-ms "$SEARCH_P99_MS" --search-secs "$SEARCH_SECS" --search-from "$SEARCH_FROM" \
        "${CHECK[@]}" --tsv "$TSV"
done

echo; echo "=== medians over $RUNS runs (LiteLLM $VERSION, $LITELLM_WORKERS worker(s))"
"$VENV/bin/python" "$ROOT/scripts/bench/medians.py" "$TSV"
