#!/usr/bin/env python3
"""CPU per request of a server under a load run, by thread: `cpu.py snap PID > before`, the load,
`cpu.py snap PID > after`, then `cpu.py report before after REQUESTS` (used by run.sh with CPU=1).

A snapshot is each thread's name, user and system ticks and context switches (/proc/PID/task), and
the machine's /proc/stat line; the report gives µs per request by thread name (threads started
during the run count from zero) and the whole machine's busy time per request, load generator
included."""
import json
import os
import sys


def snap(pid):
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            switches = 0
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        # After the ")": state is field 0, utime 11, stime 12.
        threads[tid] = [name, int(fields[11]), int(fields[12]), switches]
    with open("/proc/stat") as f:
        machine = [int(x) for x in f.readline().split()[1:]]
    print(json.dumps({"threads": threads, "machine": machine}))


def report(before_path, after_path, requests):
    before, after = (json.load(open(p)) for p in (before_path, after_path))
    hz = os.sysconf("SC_CLK_TCK")
    per = lambda ticks: ticks / hz * 1e6 / requests
    by_name = {}
    for tid, (name, user, system, switches) in after["threads"].items():
        _, user0, system0, switches0 = before["threads"].get(tid, [name, 0, 0, 0])
        row = by_name.setdefault(name, [0, 0, 0])
        row[0] += user - user0
        row[1] += system - system0
        row[2] += switches - switches0
    total = 0.0
    for name, (user, system, switches) in sorted(by_name.items()):
        total += per(user + system)
        if per(user + system) >= 0.05:
            print(f"  {name:<18} {per(user + system):6.1f} µs/req (user {per(user):5.1f}, system "
                  f"{per(system):5.1f}), {switches / requests:.2f} switches/req")
    print(f"  {'server':<18} {total:6.1f} µs/req")
    delta = [b - a for a, b in zip(before["machine"], after["machine"])]
    idle = delta[3] + delta[4]
    print(f"  machine busy {per(sum(delta) - idle):.1f} µs/req (load generator included), "
          f"idle {100 * idle / max(sum(delta), 1):.0f} %")


if __name__ == "__main__":
    if sys.argv[1] == "snap":
        snap(sys.argv[2])
    else:
        report(sys.argv[2], sys.argv[3], int(sys.argv[4]))
