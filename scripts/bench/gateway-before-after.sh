#!/usr/bin/env bash
# The gateway of two builds side by side under one load: `tollgate bench`
# (of AFTER) sends the load from its own process to its simulated upstream
# ("direct") and to four `tollgate serve` processes in front of that
# upstream: BEFORE and AFTER, each with the memory store and with Redis.
# Every gateway gets the same config file, and a Redis gateway a fresh Redis
# of its own each round; the order of the gateways alternates between
# rounds. Prints, per rate and
# gateway, the medians and ranges over the rounds of the added p50 / p99, of
# the gateway process's CPU time per request (a bench per rate) and, for the
# Redis gateways, of Redis's script calls (EVALSHA and EVAL in INFO
# commandstats), their time (commandstats usec) and Redis's CPU time per
# request; and AFTER ÷ BEFORE.
#
#   scripts/bench/gateway-before-after.sh BEFORE/tollgate AFTER/tollgate
#
# (two release builds, e.g. `git worktree add /tmp/before COMMIT` and
# `cargo build --release -p tollgate-cli` in each). Settings (environment):
# ROUNDS=5 SECS=10 RATES=1000,5000 OUT=target/bench-before-after.
#
# The measurement runs in a network namespace of its own (`unshare -n`, only
# loopback up) when it can. Everything it starts is stopped at the end; each
# run is bounded by the bench's timeouts (5 s per request, 20 s settling).
set -euo pipefail

BEFORE=$(realpath "${1:?usage: $0 BEFORE/tollgate AFTER/tollgate}")
AFTER=$(realpath "${2:?usage: $0 BEFORE/tollgate AFTER/tollgate}")
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
SECS=${SECS:-10}
RATES=${RATES:-1000,5000}
OUT=$(realpath -m "${OUT:-target/bench-before-after}")
mkdir -p "$OUT"

if [[ "${TOLLGATE_BENCH_ISOLATED:-}" != 1 ]] && unshare -n true 2>/dev/null; then
    exec unshare -n env TOLLGATE_BENCH_ISOLATED=1 OUT="$OUT" "$0" "$BEFORE" "$AFTER"
fi
if [[ "${TOLLGATE_BENCH_ISOLATED:-}" == 1 ]]; then
    ip link set lo up
else
    echo "note: cannot create a network namespace; running on the host's loopback" >&2
fi
ulimit -n 65536 2>/dev/null || true

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

# The gateway process's user + system CPU time, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Script calls (EVALSHA, EVAL), their microseconds and the server's CPU
# microseconds so far, of the redis-server on port $1.
redis_totals() {
    { redis-cli -p "$1" info commandstats; redis-cli -p "$1" info cpu; } | tr -d '\r' |
        awk -F'[:=,]' '/^cmdstat_(evalsha|eval):/ {calls += $3; usec += $5}
            /^used_cpu_(sys|user):/ {cpu += $2}
            END {printf "%d %d %d\n", calls, usec, cpu * 1000000}'
}

ADMIN_TOKEN=tg-bench-admin
# Every request the gateway answered, whatever its outcome.
requests() {
    curl -sf -m 5 -H "Authorization: Bearer $ADMIN_TOKEN" "$1/metrics" |
        awk '/^tollgate_requests_total/ {s += $NF} END {printf "%d\n", s}'
}

# Emptied first: a log left by an earlier run would name its port before this
# upstream has written its own.
: >"$OUT/upstream.log"
"$AFTER" upstream-sim --port "$(free_port)" >"$OUT/upstream.log" 2>&1 &
UPSTREAM_PID=$!
for _ in $(seq 50); do grep -qs "simulated upstream on" "$OUT/upstream.log" && break; sleep 0.1; done
UPSTREAM=$(sed -n 's/^simulated upstream on //p' "$OUT/upstream.log")
[[ -n $UPSTREAM ]] || { echo "the simulated upstream did not start" >&2; exit 1; }

# shellcheck source=scripts/bench/gateway-config.sh
source scripts/bench/gateway-config.sh
config() { gateway_config "$@"; }

TSV=$OUT/results.tsv
COST=$OUT/cost.tsv
REDIS_COST=$OUT/redis.tsv
: >"$TSV"
: >"$COST"
: >"$REDIS_COST"
for round in $(seq "$ROUNDS"); do
    # A fresh Redis for each Redis gateway: the two builds' keys need not
    # agree (a bucket written by one may not be read by the other).
    declare -A REDIS=()
    for build in before after; do
        REDIS[$build]=$(free_port)
        redis-server --bind 127.0.0.1 --port "${REDIS[$build]}" --save "" --appendonly no \
            >"$OUT/redis-$build.log" 2>&1 &
        PIDS+=($!)
        for _ in $(seq 50); do redis-cli -p "${REDIS[$build]}" ping >/dev/null 2>&1 && break; sleep 0.1; done
        redis-cli -p "${REDIS[$build]}" flushall >/dev/null
    done
    declare -A URL=() PID=()
    names=(before-memory after-memory before-redis after-redis)
    (( round % 2 == 0 )) && names=(after-memory before-memory after-redis before-redis)
    for name in "${names[@]}"; do
        build=${name%-*}
        bin=$BEFORE
        [[ $build == after ]] && bin=$AFTER
        store=memory://
        [[ $name == *-redis ]] && store=redis://127.0.0.1:${REDIS[$build]}
        port=$(free_port)
        config "127.0.0.1:$port" "$store" >"$OUT/$name.toml"
        "$bin" serve --config "$OUT/$name.toml" >"$OUT/$name.log" 2>&1 &
        PIDS+=($!)
        PID[$name]=$!
        URL[$name]=http://127.0.0.1:$port
    done
    targets=()
    for name in "${names[@]}"; do
        for i in $(seq 100); do
            curl -sf -m 1 "${URL[$name]}/healthz" >/dev/null 2>&1 && break
            if [[ $i == 100 ]]; then echo "$name did not start:" >&2; cat "$OUT/$name.log" >&2; exit 1; fi
            sleep 0.1
        done
        targets+=(--target "$name=${URL[$name]}/v1")
    done
    echo; echo "=== round $round of $ROUNDS: ${names[*]}"
    hz=$(getconf CLK_TCK)
    for rate in ${RATES//,/ }; do
        declare -A TICKS=() SERVED=() RTOT=()
        for name in "${names[@]}"; do
            TICKS[$name]=$(cpu_ticks "${PID[$name]}")
            SERVED[$name]=$(requests "${URL[$name]}")
            [[ $name == *-redis ]] && RTOT[$name]=$(redis_totals "${REDIS[${name%-*}]}")
        done
        "$AFTER" bench --upstream "$UPSTREAM" --rates "$rate" --secs "$SECS" \
            --only "direct,$(IFS=,; echo "${names[*]}")" "${targets[@]}" --tsv "$TSV"
        for name in "${names[@]}"; do
            ticks=$(( $(cpu_ticks "${PID[$name]}") - TICKS[$name] ))
            served=$(( $(requests "${URL[$name]}") - SERVED[$name] ))
            printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$rate" "$name" \
                "$(( ticks * 1000000 / hz ))" "$served" >>"$COST"
            if [[ $name == *-redis ]]; then
                read -r c0 u0 p0 <<<"${RTOT[$name]}"
                read -r c1 u1 p1 <<<"$(redis_totals "${REDIS[${name%-*}]}")"
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$rate" "$name" \
                    "$(( c1 - c0 ))" "$(( u1 - u0 ))" "$(( p1 - p0 ))" "$served" >>"$REDIS_COST"
            fi
        done
    done
    stop_all
done
kill "$UPSTREAM_PID" 2>/dev/null || true
wait "$UPSTREAM_PID" 2>/dev/null || true

echo; echo "=== medians over $ROUNDS rounds (range in brackets)"
python3 - "$TSV" "$COST" "$REDIS_COST" <<'EOF'
import statistics, sys
from collections import defaultdict

runs = defaultdict(list)
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if f[0] == "rate":
        runs[(int(f[2]), f[1])].append(f)
cost = defaultdict(list)
for line in open(sys.argv[2]):
    _, rate, name, usec, served = line.split("\t")
    cost[(int(rate), name)].append(int(usec) / max(int(served), 1))

def cell(values, digits):
    m = statistics.median(values)
    return m, f"{m:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"

print("| rate/s | gateway | added p50 ms | added p99 ms | not ok / sent | after ÷ before p50 | after ÷ before p99 |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for rate in sorted({r for r, _ in runs}):
    for store in ("memory", "redis"):
        med = {}
        for build in ("before", "after"):
            rows = runs.get((rate, f"{build}-{store}"), [])
            if not rows:
                continue
            p50, p50s = cell([float(r[11]) for r in rows], 3)
            p99, p99s = cell([float(r[12]) for r in rows], 3)
            med[build] = (p50, p99)
            bad = sum(int(r[3]) - int(r[4]) for r in rows)
            sent = sum(int(r[3]) for r in rows)
            ratio = ("", "")
            if build == "after" and "before" in med:
                b = med["before"]
                ratio = tuple(f"{a / x:.2f}" if x > 0 else "-" for a, x in zip((p50, p99), b))
            print(f"| {rate:,} | {build}, {store} | {p50s} | {p99s} | {bad:,} / {sent:,} | {ratio[0]} | {ratio[1]} |")
print()
print("gateway CPU time per request answered (each rate's bench, warm-up included), µs:")
show = lambda v: " / ".join(f"{x:.1f}" for x in v)
for rate, store in sorted({(r, n.split("-")[1]) for r, n in cost}):
    b, a = cost[(rate, f"before-{store}")], cost[(rate, f"after-{store}")]
    mb, ma = statistics.median(b), statistics.median(a)
    print(f"  {rate:,}/s {store}: before {mb:.1f} ({show(b)}), after {ma:.1f} ({show(a)}), "
          f"after ÷ before {ma / mb:.2f}")
rcost = defaultdict(list)
for line in open(sys.argv[3]):
    _, rate, name, calls, usec, cpu, served = line.split("\t")
    n = max(int(served), 1)
    rcost[(int(rate), name)].append((int(calls) / n, int(usec) / n, int(cpu) / n))
if rcost:
    print()
    print("Redis per request answered (each rate's bench, warm-up included): "
          "script calls, their µs (commandstats), Redis CPU µs:")
    for rate in sorted({r for r, _ in rcost}):
        line = f"  {rate:,}/s"
        med = {}
        for build in ("before", "after"):
            v = rcost.get((rate, f"{build}-redis"), [])
            if not v:
                continue
            m = [statistics.median(x[i] for x in v) for i in range(3)]
            med[build] = m
            line += (f"  {build}: {m[0]:.2f} calls ({show(x[0] for x in v)}), {m[1]:.1f} µs "
                     f"({show(x[1] for x in v)}), CPU {m[2]:.1f} µs ({show(x[2] for x in v)})")
        if len(med) == 2:
            line += "  after ÷ before: " + ", ".join(
                f"{a / b:.2f}" if b > 0 else "-" for a, b in zip(med["after"], med["before"]))
        print(line)
EOF
