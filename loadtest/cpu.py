#!/usr/bin/env python3
"""CPU seconds (user + system) used so far by processes, from /proc/PID/stat.

  cpu.py PID...          the sum over these processes (every thread of each)
  cpu.py --tree PID      PID, its children alive now, and its children that already exited
                         (their time is in PID's cutime/cstime once reaped) — e.g. a PostgreSQL
                         postmaster: every backend, walwriter, checkpointer … of that cluster
  cpu.py --by-kind PID   the same tree split by process kind, as JSON: {"backend": s,
                         "autovacuum worker": s, "walwriter": s, …, "exited": s (reaped children),
                         "postmaster": s} — which part of a cluster's CPU is not its client backends

Take it before and after a phase: the difference is the CPU the phase cost. A process that is gone
counts 0 (its time is then in its parent's cutime/cstime).
"""
import json
import os
import sys

TICK = os.sysconf("SC_CLK_TCK")


def fields(pid):
    """The fields of /proc/PID/stat after the command name, or None if PID is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            line = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (comm) state ppid …": the command may hold spaces and parentheses.
    return line[line.rindex(")") + 2:].split()


def own(f):  # utime + stime (fields 14, 15)
    return int(f[11]) + int(f[12])


def reaped(f):  # cutime + cstime (fields 16, 17): children that exited and were waited for
    return int(f[13]) + int(f[14])


def tree(root):
    f = fields(root)
    if f is None:
        return 0
    total = own(f) + reaped(f)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == root:
            continue
        c = fields(entry)
        if c is not None and int(c[1]) == root:
            total += own(c) + reaped(c)
    return total


AUX = ("autovacuum launcher", "autovacuum worker", "background writer", "checkpointer",
       "walwriter", "logical replication launcher", "stats collector", "archiver", "startup")


def kind(pid):
    """A PostgreSQL child's kind from its title ("postgres: walwriter"); client backends are
    "backend"."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return "exited"
    title = title.split(":", 1)[1].strip() if ":" in title else title
    return next((a for a in AUX if title.startswith(a)), "backend")


def by_kind(root):
    f = fields(root)
    if f is None:
        return {}
    split = {"postmaster": own(f) / TICK, "exited": reaped(f) / TICK}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == root:
            continue
        c = fields(entry)
        if c is not None and int(c[1]) == root:
            k = kind(entry)
            split[k] = split.get(k, 0) + (own(c) + reaped(c)) / TICK
    return split


def main(argv):
    if len(argv) == 2 and argv[0] == "--by-kind":
        print(json.dumps({k: round(v, 2) for k, v in by_kind(int(argv[1])).items()}))
        return
    if len(argv) == 2 and argv[0] == "--tree":
        ticks = tree(int(argv[1]))
    elif argv and all(a.isdigit() for a in argv):
        ticks = sum(own(f) for f in map(fields, argv) if f is not None)
    else:
        sys.exit(__doc__)
    print(f"{ticks / TICK:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
