#!/usr/bin/env python3
"""CPU seconds (user + system) used so far by processes, from /proc/PID/stat.

  cpu.py PID...          the sum over these processes (every thread of each)
  cpu.py --tree PID      PID, its children alive now, and its children that already exited
                         (their time is in PID's cutime/cstime once reaped) — e.g. a PostgreSQL
                         postmaster: every backend, walwriter, checkpointer … of that cluster

Take it before and after a phase: the difference is the CPU the phase cost. A process that is gone
counts 0 (its time is then in its parent's cutime/cstime).
"""
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


def main(argv):
    if len(argv) == 2 and argv[0] == "--tree":
        ticks = tree(int(argv[1]))
    elif argv and all(a.isdigit() for a in argv):
        ticks = sum(own(f) for f in map(fields, argv) if f is not None)
    else:
        sys.exit(__doc__)
    print(f"{ticks / TICK:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
