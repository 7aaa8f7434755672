#!/usr/bin/env python3
"""Server-side latency of a bench phase, from the replicas' Prometheus histograms.

  server_latency.py snap PORT…            prints the buckets of the histograms below, summed over
                                          the replicas' metrics ports, as JSON
  server_latency.py diff BEFORE AFTER     prints, for the phase between two snapshots, each
                                          histogram's count and p50/p99 as bucket bounds
                                          ("≤ 2.5 ms": the bucket the quantile falls in)

The histograms: the ping as the replica handled it (taskqueue_ping_duration_seconds: from the
request to the answer, batch wait included), the wait of a ping and of a status update for its
batch (taskqueue_batch_wait_seconds), and the replica's handling of every RPC of the two kinds
(grpc_server_handling_seconds). The client's latency minus the server's is time in the
client, the network and the kernel's run queues.
"""
import json
import re
import sys
import urllib.request

WANTED = {
    "ping": ("taskqueue_ping_duration_seconds_bucket", None),
    "ping batch wait": ("taskqueue_batch_wait_seconds_bucket", 'kind="ping"'),
    "status batch wait": ("taskqueue_batch_wait_seconds_bucket", 'kind="status"'),
    "UpdateTaskStatus": ("grpc_server_handling_seconds_bucket", 'grpc_method="UpdateTaskStatus"'),
}


def snap(ports):
    out = {k: {} for k in WANTED}
    for p in ports:
        text = urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=10).read().decode()
        for line in text.splitlines():
            for key, (name, label) in WANTED.items():
                if not line.startswith(name + "{") or (label and label not in line):
                    continue
                m = re.search(r'le="([^"]+)"\}\s+(\S+)$', line)
                if m:
                    out[key][m[1]] = out[key].get(m[1], 0) + float(m[2])
    return out


def quantile(buckets, q):
    total = buckets.get("+Inf", 0)
    if total <= 0:
        return None
    for le, n in sorted(((float(k), v) for k, v in buckets.items() if k != "+Inf")):
        if n >= q * total:
            return le
    return float("inf")


def diff(before, after):
    res = {}
    for key in WANTED:
        a, b = before.get(key, {}), after.get(key, {})
        d = {le: b[le] - a.get(le, 0) for le in b}
        n = d.get("+Inf", 0)
        res[key] = {"count": n, "p50_le_ms": ms(quantile(d, 0.5)), "p99_le_ms": ms(quantile(d, 0.99))}
    return res


def ms(v):
    return None if v is None else (v * 1000 if v != float("inf") else "inf")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "snap":
        print(json.dumps(snap(sys.argv[2:])))
    elif len(sys.argv) == 4 and sys.argv[1] == "diff":
        print(json.dumps(diff(json.loads(sys.argv[2]), json.loads(sys.argv[3]))))
    else:
        sys.exit(__doc__)
