"""Medians over the runs in a `tollgate bench --tsv` file, as Markdown tables.

usage: python3 scripts/bench/medians.py results.tsv

Lines are `rate NAME RATE SENT OK 429 FAILED TIMED_OUT SHED P50 P99 ADDED_P50
ADDED_P99 DONE_PER_S` and `search NAME HELD_RATE` (tab-separated).
"""

import statistics
import sys
from collections import defaultdict


def main(path: str) -> None:
    rates = defaultdict(list)
    held = defaultdict(list)
    order = []
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        if f[0] == "rate":
            key = (int(f[2]), f[1])
            if key not in rates:
                order.append(key)
            rates[key].append(f)
        elif f[0] == "search":
            held[f[1]].append(int(f[2]))

    med = lambda rows, i: statistics.median(float(r[i]) for r in rows)
    print("| rate/s | endpoint | p50 ms | p99 ms | added p50 ms | added p99 ms | not ok / sent (429, errors, timeouts, shed) | done/s | runs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for key in sorted(order, key=lambda k: (k[0], order.index(k))):
        rows = rates[key]
        sent = sum(int(r[3]) for r in rows)
        parts = [sum(int(r[i]) for r in rows) for i in (5, 6, 7, 8)]
        added = lambda i: "-" if key[1] == "direct" else f"{med(rows, i):.2f}"
        print(
            f"| {key[0]:,} | {key[1]} | {med(rows, 9):.2f} | {med(rows, 10):.2f} | {added(11)} | {added(12)} "
            f"| {sum(parts):,} / {sent:,} ({', '.join(f'{p:,}' for p in parts)}) | {med(rows, 13):,.0f} | {len(rows)} |"
        )
    if held:
        print()
        print("| endpoint | highest rate held, median (each run) |")
        print("| --- | --- |")
        for name, values in held.items():
            each = ", ".join(f"{v:,}" for v in values)
            print(f"| {name} | {statistics.median(values):,.0f} req/s ({each}) |")


if __name__ == "__main__":
    main(sys.argv[1])
