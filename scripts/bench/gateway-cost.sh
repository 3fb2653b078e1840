#!/usr/bin/env bash
# What one request costs the gateway process of two builds, in measures a
# busy machine barely moves: CPU time and instructions per request, from a
# fixed number of sequential requests (one at a time, keep-alive), not from
# wall time under an open-loop load.
#
#   scripts/bench/gateway-cost.sh BEFORE/tollgate AFTER/tollgate
#
# For each build and each store (memory, a fresh Redis of its own), it
# starts one `tollgate serve` behind the AFTER build's simulated upstream (one config both builds read; AFTER is also run with its usage
# ledger off, "after-noledger", as BEFORE has none when it predates the
# ledger), sends WARM requests, then ROUNDS times REQUESTS more, reading:
#   - cpu: the process's user + system time over those REQUESTS
#     (/proc/PID/stat), per request;
#   - instructions: the same requests with the gateway under valgrind's
#     callgrind (counters zeroed after the warm-up, dumped after the last
#     request), instructions executed per request. Deterministic up to the
#     gateway's own timers; `perf stat -e instructions` would be cheaper but
#     is not supported on VMs without a PMU, such as the one this was
#     written on.
# Prints medians (and every round) and AFTER ÷ BEFORE. valgrind comes from
# Debian's package (installed with apt-get when missing).
#
# Settings (environment): ROUNDS=3 REQUESTS=1000 WARM=200 CALLGRIND=1
# (0: CPU time only) STORES="memory redis" BUILDS="before after
# after-noledger" OUT=target/bench-gateway-cost.
# Everything runs on loopback and is stopped at the end.
set -euo pipefail

BEFORE=$(realpath "${1:?usage: $0 BEFORE/tollgate AFTER/tollgate}")
AFTER=$(realpath "${2:?usage: $0 BEFORE/tollgate AFTER/tollgate}")
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-1000}
WARM=${WARM:-200}
CALLGRIND=${CALLGRIND:-1}
STORES=${STORES:-memory redis}
BUILDS=${BUILDS:-before after after-noledger}
OUT=$(realpath -m "${OUT:-target/bench-gateway-cost}")
mkdir -p "$OUT"

if [[ $CALLGRIND == 1 ]] && ! command -v valgrind >/dev/null 2>&1; then
    echo "==> installing valgrind (Debian package)"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq valgrind >/dev/null
fi

PIDS=()
stop_all() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap stop_all EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# user + system CPU time of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# N sequential chat requests on one keep-alive connection; fails on any
# answer but 200.
send() { # URL N
    python3 - "$1" "$2" <<'EOF'
import http.client, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16}'
headers = {"Authorization": "Bearer tg-demo-enterprise", "Content-Type": "application/json"}
c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
for i in range(int(sys.argv[2])):
    c.request("POST", "/v1/chat/completions", body, headers)
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"request {i}: status {r.status}")
EOF
}

# Emptied first: a log left by an earlier run would name its port before this
# upstream has written its own.
: >"$OUT/upstream.log"
"$AFTER" upstream-sim --port "$(free_port)" >"$OUT/upstream.log" 2>&1 &
UPSTREAM_PID=$!
for _ in $(seq 50); do grep -qs "simulated upstream on" "$OUT/upstream.log" && break; sleep 0.1; done
UPSTREAM=$(sed -n 's/^simulated upstream on //p' "$OUT/upstream.log")
[[ -n $UPSTREAM ]] || { echo "the simulated upstream did not start" >&2; exit 1; }

ADMIN_TOKEN=tg-bench-admin
# shellcheck source=scripts/bench/gateway-config.sh
source scripts/bench/gateway-config.sh
config() { # LISTEN STORE LEDGER(off|none)
    gateway_config "$1" "$2"
    [[ $3 == off ]] && printf '[ledger]\nurl = "off"\n'
    return 0
}

# One gateway: NAME BIN STORE LEDGER MODE(cpu|callgrind). Started once, warmed,
# then measured ROUNDS times over REQUESTS requests each; prints one line per
# round: CPU µs or instructions per request.
measure() {
    local name=$1 bin=$2 store=$3 ledger=$4 mode=$5
    local dir="$OUT/$name-$mode"
    rm -rf "$dir"
    mkdir -p "$dir"
    local url=memory://
    if [[ $store == redis ]]; then
        local rport
        rport=$(free_port)
        redis-server --bind 127.0.0.1 --port "$rport" --save "" --appendonly no \
            >"$dir/redis.log" 2>&1 &
        PIDS+=($!)
        for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
        url=redis://127.0.0.1:$rport
    fi
    local port
    port=$(free_port)
    config "127.0.0.1:$port" "$url" "$ledger" >"$dir/tollgate.toml"
    if [[ $mode == callgrind ]]; then
        valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out.%p" \
            --dump-instr=no \
            "$bin" serve --config "$dir/tollgate.toml" >"$dir/serve.log" 2>&1 &
    else
        "$bin" serve --config "$dir/tollgate.toml" >"$dir/serve.log" 2>&1 &
    fi
    local pid=$!
    PIDS+=($pid)
    # Under valgrind the start (the tokenizers' tables) takes about a minute.
    for i in $(seq 3000); do
        curl -sf -m 2 "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
        if [[ $i == 3000 ]]; then echo "$name did not start:" >&2; cat "$dir/serve.log" >&2; exit 1; fi
        sleep 0.1
    done
    send "http://127.0.0.1:$port" "$WARM"
    local round
    for round in $(seq "$ROUNDS"); do
        if [[ $mode == callgrind ]]; then
            callgrind_control -z "$pid" >/dev/null
            send "http://127.0.0.1:$port" "$REQUESTS"
            callgrind_control -d "$pid" >/dev/null
            # Each dump holds what ran since the counters were zeroed.
            local ir
            ir=$(awk '/^summary:/ {print $2}' "$dir/callgrind.out.$pid.$round")
            echo "$round $(( ir / REQUESTS ))"
        else
            local t0 t1
            t0=$(cpu_ticks "$pid")
            send "http://127.0.0.1:$port" "$REQUESTS"
            t1=$(cpu_ticks "$pid")
            echo "$round $(( (t1 - t0) * 1000000 / $(getconf CLK_TCK) / REQUESTS ))"
        fi
    done
    stop_all
}

TSV=$OUT/results.tsv
: >"$TSV"
modes=(cpu)
[[ $CALLGRIND == 1 ]] && modes+=(callgrind)
for mode in "${modes[@]}"; do
    for store in $STORES; do
        for build in $BUILDS; do
            bin=$AFTER ledger=none
            [[ $build == before ]] && bin=$BEFORE
            [[ $build == after-noledger ]] && ledger=off
            measure "$build-$store" "$bin" "$store" "$ledger" "$mode" >"$OUT/rounds"
            while read -r round v; do
                printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$mode" "$store" "$build" "$v" | tee -a "$TSV"
            done <"$OUT/rounds"
        done
    done
done
kill "$UPSTREAM_PID" 2>/dev/null || true
wait "$UPSTREAM_PID" 2>/dev/null || true

echo; echo "=== per request, median of $ROUNDS rounds ($REQUESTS sequential requests each, after $WARM)"
python3 - "$TSV" <<'EOF'
import statistics, sys
from collections import defaultdict
v = defaultdict(list)
for line in open(sys.argv[1]):
    _, mode, store, build, x = line.split()
    v[(mode, store, build)].append(int(x))
unit = {"cpu": "CPU µs", "callgrind": "instructions"}
for mode in ("cpu", "callgrind"):
    for store in ("memory", "redis"):
        b = v.get((mode, store, "before"))
        if not b:
            continue
        mb = statistics.median(b)
        line = f"{store:6} {unit[mode]:12}: before {mb:,.0f} ({' / '.join(f'{x:,}' for x in b)})"
        for build in ("after", "after-noledger"):
            a = v.get((mode, store, build), [])
            if a:
                ma = statistics.median(a)
                line += f"; {build} {ma:,.0f} ({' / '.join(f'{x:,}' for x in a)}) = {ma / mb:.3f}×"
        print(line)
EOF
