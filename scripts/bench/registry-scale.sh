#!/usr/bin/env bash
# The registry at scale (issue 16), RUNS times, and the medians:
#
#   scripts/bench/registry-scale.sh            # 100,000 clients, 200,000 keys
#   CLIENTS=10000 SECS=5 scripts/bench/registry-scale.sh
#
# Each run (`tollgate-harness registry-scale`) starts a PostgreSQL and a
# redis-server of its own on loopback, seeds the registry's tables with
# CLIENTS clients and 2 keys each, starts two `tollgate serve` processes (A
# and B) on them, measures each one's start and resident memory (against
# the same config on an empty database), then probes one client on B every
# 5 ms for SECS seconds alone and SECS more while A takes CHANGES admin
# changes a second (a key issued, a client moved, a key revoked, a tier
# changed, in turn), the two alternating in 5 rounds, and reads how long
# B's changes held its index's write lock. Everything is stopped at the
# end of each run.
#
# Settings (environment): RUNS=3 CLIENTS=100000 CHANGES=100 SECS=20
# OUT=target/bench-registry-scale, NO_FSYNC=1 (PostgreSQL with fsync off:
# each change's commit no longer waits for the disk), BASELINE=path to
# another `tollgate` binary (an earlier commit's release build): each run
# then measures it and this tree's, the two taking turns going first, each
# on a database seeded alike and with the same driver, and both tables are
# printed, then this tree's medians over the baseline's. Release builds of
# tollgate and tollgate-harness are made first (CARGO_TARGET_DIR is
# honoured), unless BIN_DIR names a folder that already holds release
# builds of this tree's `tollgate` and `tollgate-harness`.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-100000}
CHANGES=${CHANGES:-100}
SECS=${SECS:-20}
OUT=$(realpath -m "${OUT:-target/bench-registry-scale}")
mkdir -p "$OUT"

if [ -n "${BIN_DIR:-}" ]; then
    BIN=$(realpath "$BIN_DIR")
    for b in tollgate tollgate-harness; do
        [ -x "$BIN/$b" ] || { echo "BIN_DIR=$BIN_DIR holds no executable $b" >&2; exit 2; }
    done
else
    cargo build --release -q -p tollgate-cli -p tollgate-harness
    BIN="${CARGO_TARGET_DIR:-target}/release"
fi
run() { # binary, output file
    "$BIN/tollgate-harness" registry-scale --clients "$CLIENTS" --changes-per-sec "$CHANGES" \
        --secs "$SECS" --tollgate "$1" ${NO_FSYNC:+--no-fsync} --json > "$2"
}
baseline() {
    echo "==> run $i of $RUNS, baseline (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    run "$BASELINE" "$OUT/run-$i-baseline.json"
}
this_tree() {
    echo "==> run $i of $RUNS, this tree (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    run "$BIN/tollgate" "$OUT/run-$i.json"
}
if [ -n "${BASELINE:-}" ]; then
    [ -x "$BASELINE" ] || { echo "BASELINE=$BASELINE is not an executable tollgate binary" >&2; exit 2; }
fi
for i in $(seq 1 "$RUNS"); do
    # With a baseline, the two take turns going first, so that neither
    # always meets the machine as the other left it.
    if [ -z "${BASELINE:-}" ]; then
        this_tree
    elif [ $((i % 2)) -eq 1 ]; then
        baseline
        this_tree
    else
        this_tree
        baseline
    fi
done
summary() { # title, file suffix
python3 - "$OUT" "$RUNS" "$1" "$2" <<'PY'
import json, statistics, sys
out, runs, title, suffix = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rs = [json.load(open(f"{out}/run-{i}{suffix}.json")) for i in range(1, runs + 1)]
print(f"\n{title}\n")
med = lambda f: statistics.median(f(r) for r in rs)
each = lambda f, fmt: ", ".join(fmt.format(f(r)) for r in rs)
rows = [
    ("start of A, s (target ≤ 2)", lambda r: r["start_s"][0], "{:.3f}"),
    ("start of B, s", lambda r: r["start_s"][1], "{:.3f}"),
    ("start, empty database, s", lambda r: r["start_s"][2], "{:.3f}"),
    ("CPU of A's start (user+sys), s", lambda r: (r.get("start_cpu_s") or [float("nan")] * 3)[0], "{:.2f}"),
    ("CPU of B's start (user+sys), s", lambda r: (r.get("start_cpu_s") or [float("nan")] * 3)[1], "{:.2f}"),
    ("CPU of the empty start (user+sys), s", lambda r: (r.get("start_cpu_s") or [float("nan")] * 3)[2], "{:.2f}"),
    ("RSS of A, MB", lambda r: r["rss_bytes"][0] / 1048576, "{:.1f}"),
    ("RSS, empty database, MB", lambda r: r["rss_bytes"][2] / 1048576, "{:.1f}"),
    ("memory per client, bytes (target ≤ 1024)", lambda r: r["bytes_per_client"], "{:.0f}"),
    ("probe on B alone, p50 ms", lambda r: r["quiet"]["p50"], "{:.2f}"),
    ("probe on B alone, p99 ms", lambda r: r["quiet"]["p99"], "{:.2f}"),
    ("probe on B alone, max ms", lambda r: r["quiet"]["max"], "{:.2f}"),
    ("probe on B during changes, p50 ms", lambda r: r["changing"]["p50"], "{:.2f}"),
    ("probe on B during changes, p99 ms", lambda r: r["changing"]["p99"], "{:.2f}"),
    ("probe on B during changes, max ms", lambda r: r["changing"]["max"], "{:.2f}"),
    ("p99 during − p99 alone, ms (target ≤ 1)", lambda r: r["changing"]["p99"] - r["quiet"]["p99"], "{:.2f}"),
    ("the same, median of the run's rounds, ms", lambda r: statistics.median(r.get("p99_delta_by_round") or [float("nan")]), "{:.2f}"),
    ("B's longest hold of its index's write lock, ms", lambda r: (r["b_registry"].get("longest_write_hold_us") or float("nan")) / 1000, "{:.3f}"),
    ("B's holds of its index's write lock", lambda r: r["b_registry"].get("write_holds") or 0, "{}"),
    ("B's clients rebuilt in their own entry", lambda r: float("nan") if r["b_registry"].get("clients_refreshed") is None else r["b_registry"]["clients_refreshed"], "{}"),
    ("changes taken by A per s", lambda r: r["changes_per_sec"], "{:.1f}"),
    ("changes failed", lambda r: r["changes_failed"], "{}"),
    ("admin answer on A, p50 ms", lambda r: r["change_ms"][0], "{:.1f}"),
    ("admin answer on A, p99 ms", lambda r: r["change_ms"][1], "{:.1f}"),
    ("B's index built whole (start + gaps)", lambda r: r["b_registry"]["index_builds"], "{}"),
    ("B's entries replaced one at a time", lambda r: r["b_registry"]["changes_applied"], "{}"),
    ("B's last change − A's", lambda r: r["b_registry"]["version"] - r["a_version"], "{}"),
    ("load average before the run", lambda r: r["load"][0], "{:.2f}"),
]
fsync = "on" if rs[0]["durable"] else "off"
print(f"| {rs[0]['clients']:,} clients, {rs[0]['keys']:,} keys, PostgreSQL fsync {fsync} | median of {runs} | runs |")
print("| --- | --- | --- |")
for name, f, fmt in rows:
    print(f"| {name} | {fmt.format(med(f))} | {each(f, fmt)} |")
print(f"\nlast key issued on A answered 200 on B: {[r['last_key_works_on_b'] for r in rs]}; failed changes by status: {[r['failures'] for r in rs]}")
PY
}
if [ -n "${BASELINE:-}" ]; then
    summary "baseline: $BASELINE" "-baseline"
fi
summary "this tree: $(git rev-parse --short HEAD)" ""
if [ -n "${BASELINE:-}" ]; then
python3 - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
load = lambda suffix: [json.load(open(f"{out}/run-{i}{suffix}.json")) for i in range(1, runs + 1)]
base, new = load("-baseline"), load("")
rows = [
    ("start of A, s", lambda r: r["start_s"][0]),
    ("start of B, s", lambda r: r["start_s"][1]),
    ("CPU of A's start, s", lambda r: (r.get("start_cpu_s") or [float("nan")])[0]),
    ("CPU of B's start, s", lambda r: (r.get("start_cpu_s") or [float("nan")] * 2)[1]),
    ("memory per client, bytes", lambda r: r["bytes_per_client"]),
    ("p99 during − p99 alone, ms", lambda r: r["changing"]["p99"] - r["quiet"]["p99"]),
    ("B's longest write hold, ms", lambda r: (r["b_registry"].get("longest_write_hold_us") or float("nan")) / 1000),
    ("B's write holds", lambda r: r["b_registry"].get("write_holds") or float("nan")),
]
print("\n| median of each, same runs | baseline | this tree | this tree ÷ baseline |")
print("| --- | --- | --- | --- |")
for name, f in rows:
    b, n = statistics.median(f(r) for r in base), statistics.median(f(r) for r in new)
    print(f"| {name} | {b:.3f} | {n:.3f} | {n / b if b else float('nan'):.2f} |")
PY
fi
