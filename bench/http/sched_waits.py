#!/usr/bin/env python3
"""Where the serving threads waited for a CPU, from `perf sched timehist` output.

For every time a serving thread (the committer, a runtime worker) was runnable for longer than
THRESHOLD_MS before it ran, adds up what ran meanwhile on the CPU it then ran on and on the other
CPUs. Usage, with `puhui serve` under load:

    perf sched record -o sched.data -- sleep 3
    perf sched timehist -i sched.data > timehist.txt
    python3 bench/http/sched_waits.py timehist.txt [THRESHOLD_MS]
"""
import collections
import re
import sys

SERVING = re.compile(r"committer|tokio-rt")
KINDS = ["risk-chec", "committer", "tokio-rt", "wrk", "idle", "merkle", "kdamond", "kworker"]


def kind(task):
    return next((k for k in KINDS if k in task), "other")


def main():
    path = sys.argv[1]
    threshold_ms = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
    runs = collections.defaultdict(list)  # cpu -> [(start_s, end_s, task)]
    waits = []  # (from_s, to_s, cpu, wait_ms)
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) < 6 or not p[1].startswith("["):
                continue
            try:
                t, cpu, task = float(p[0]), int(p[1].strip("[]")), p[2]
                delay_ms, run_ms = float(p[4]), float(p[5])
            except ValueError:
                continue
            start = t - run_ms / 1000
            runs[cpu].append((start, t, task))
            if SERVING.search(task) and delay_ms > threshold_ms:
                waits.append((start - delay_ms / 1000, start, cpu, delay_ms))
    same, other = collections.Counter(), collections.Counter()
    for (a, b, cpu, _) in waits:
        for c, spans in runs.items():
            for (s, e, task) in spans:
                overlap = min(b, e) - max(a, s)
                if overlap > 0:
                    (same if c == cpu else other)[kind(task)] += overlap * 1000
    print(f"waits over {threshold_ms} ms: {len(waits)}, {sum(w[3] for w in waits):.1f} ms in all")
    for name, counter in (("on the waiting thread's CPU", same), ("on the other CPUs", other)):
        print(f"  ran {name}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in counter.most_common(8)))


if __name__ == "__main__":
    main()
