#!/usr/bin/env python3
"""The summary of loadtest/dispatch_bench.sh: reads the phases' JSON files from the directory given
(NAME.json, written by its `save`) and prints a table — each measure, ours, the limit or peer of the
same run, the ratio, the target — then one machine-readable line, `BENCH_JSON {…}`.

CPU figures are CPU seconds of the phase (before/after, see loadtest/cpu.py) divided by what the phase
did: µs per ping, per task, per RPC. "servers" are the replica processes (or the bare tonic server),
"postgres" the whole cluster (every backend and auxiliary process), "client" the load tool itself.
"""
import json
import os
import sys


def load(d):
    out = {}
    for f in os.listdir(d):
        if f.endswith(".json"):
            with open(os.path.join(d, f)) as fh:
                text = fh.read().strip()
            if text:
                out[f[:-5]] = json.loads(text.splitlines()[-1])
    return out


def us(seconds, count):
    return seconds * 1e6 / count if count else None


def main(d):
    r = load(d)
    rows = []  # (measure, ours, limit/peer label, limit/peer value, ratio, target, met)
    fig = {}

    def row(measure, ours, unit, ref_label, ref, target=None, want=None):
        """want: ('>=', x) on the ratio, ('<=', x) on ours itself, or None."""
        ratio = ours / ref if (ours is not None and ref) else None
        met = None
        if want:
            op, x = want
            v = ratio if op[0] == "r" else ours
            if v is not None:
                met = v >= x if op.endswith(">=") else v <= x
        rows.append((measure, ours, unit, ref_label, ref, ratio, target or "", met))
        fig[f"{measure} | {ref_label}" if ref_label else measure] = {"ours": ours, "unit": unit, "ref": ref_label, "ref_value": ref, "ratio": ratio,
                        "target": target, "met": met}

    bare, cpu_bare = r.get("bare"), r.get("cpu_bare")
    bare_rate = bare["calls_per_s"] if bare else None
    bare_us = us(cpu_bare["servers"], bare["calls"]) if bare and cpu_bare else None
    bare_client_us = us(bare.get("client_cpu_s", 0), bare["calls"]) if bare else None

    for key, label in (("idle_full", "full workers"), ("idle_empty", "free capacity, empty queue")):
        p, c = r.get(key), r.get("cpu_" + key)
        if not p:
            continue
        row(f"idle pings/s ({label})", p["pings_per_s"], "/s", "bare tonic unary, same load", bare_rate,
            "≥ 0.5×", ("r>=", 0.5))
        if c:
            row(f"replica CPU per idle ping ({label})", us(c["servers"], p["pings"]), "µs",
                "bare tonic server per RPC", bare_us)
            row(f"PostgreSQL CPU per idle ping ({label})", us(c["postgres"], p["pings"]), "µs",
                "target", 15.0, "≤ 15 µs", ("<=", 15.0))
            row(f"client CPU per idle ping ({label})", us(p.get("client_cpu_s", 0), p["pings"]), "µs",
                "client per bare RPC", bare_client_us)
    if r.get("idle_full") and r.get("raw_idle"):
        ri = r["raw_idle"]
        row("idle pings/s (full workers) vs their own reads", r["idle_full"]["pings_per_s"], "/s",
            "pgbench of the 2 reads per transaction", ri["per_s"])
        row("PostgreSQL CPU per pgbench idle read pair", us(ri["cpu_s"]["postgres"], ri["per_s"] * ri["seconds"]),
            "µs", "", None)

    raw = r.get("raw")
    raw_rate = raw["claims_per_s"] if raw else None
    peer_d, peer_b = r.get("peer_default"), r.get("peer_batched")
    a, ca = r.get("assign"), r.get("cpu_assign")
    if a:
        row("assigning pings (task then S), tasks/s", a["tasks_assigned_per_s"], "/s",
            "pgbench 1 claim/transaction, equal concurrency", raw_rate, "≥ 1.0×", ("r>=", 1.0))
        if peer_d:
            row("assigning pings (task then S) vs peer, tasks/s", a["tasks_assigned_per_s"], "/s",
                "graphile-worker defaults, 16 concurrent", peer_d["jobs_per_s"], "≥ 2×", ("r>=", 2.0))
        if ca:
            n = a["tasks_assigned"]
            row("replica CPU per assigned task (ping + S)", us(ca["servers"], n), "µs",
                "graphile-worker (defaults) node CPU per job", peer_d and peer_d["node_cpu_us_per_job"])
            row("PostgreSQL CPU per assigned task (ping + S)", us(ca["postgres"], n), "µs",
                "graphile-worker (defaults) PostgreSQL CPU per job", peer_d and peer_d["pg_cpu_us_per_job"])
            row("client CPU per assigned task (ping + S)", us(a.get("client_cpu_s", 0), n), "µs", "", None)
    cf = r.get("claim_fn")
    if cf and raw:
        row("our claim alone (pgbench of tq_claim_batch), calls/s", cf["calls_per_s"], "/s",
            "pgbench 1 claim/transaction", raw_rate)
        row("PostgreSQL CPU per claim: tq_claim_batch", us(cf["cpu_s"]["postgres"], cf["calls"]), "µs",
            "PostgreSQL CPU per raw pgbench claim", us(raw["cpu_s"]["postgres"], raw["claims"]))

    life, cl = r.get("life"), r.get("cpu_life")
    if life:
        if peer_d:
            row("full lifecycle (ping, C, O, R, U, S), tasks/s", life["tasks_finished_per_s"], "/s",
                "graphile-worker defaults", peer_d["jobs_per_s"], "≥ 1.0×", ("r>=", 1.0))
        if peer_b:
            row("full lifecycle (ping, C, O, R, U, S), tasks/s", life["tasks_finished_per_s"], "/s",
                "graphile-worker batched", peer_b["jobs_per_s"], "as close as 6 RPCs allow")
        if not peer_d and not peer_b:
            row("full lifecycle (ping, C, O, R, U, S), tasks/s", life["tasks_finished_per_s"], "/s", "", None)
        if cl:
            n = life["tasks_finished"] or life["tasks_assigned"]
            row("replica CPU per lifecycle task (6 RPCs)", us(cl["servers"], n), "µs",
                "graphile-worker (batched) node CPU per job", peer_b and peer_b["node_cpu_us_per_job"])
            row("PostgreSQL CPU per lifecycle task (6 RPCs)", us(cl["postgres"], n), "µs",
                "graphile-worker (batched) PostgreSQL CPU per job", peer_b and peer_b["pg_cpu_us_per_job"])
            row("client CPU per lifecycle task (6 RPCs)", us(life.get("client_cpu_s", 0), n), "µs",
                "client CPU per bare RPC × 6", bare_client_us and 6 * bare_client_us)

    rate = r.get("rate")
    if rate:
        row(f"ping p99 at {rate['pings_per_s']:.0f} pings/s offered ~2,000, through the replicas",
            rate["ping_ms"]["p99"], "ms", "target", 10.0, "< 10 ms", ("<=", 10.0))
    rate_lb = r.get("rate_lb")
    if rate_lb:
        row(f"ping p99 at {rate_lb['pings_per_s']:.0f} pings/s offered ~2,000, through haproxy",
            rate_lb["ping_ms"]["p99"], "ms", "target", 10.0, "< 10 ms", ("<=", 10.0))

    def num(v, unit=""):
        if v is None:
            return "—"
        if unit == "ms":
            return f"{v:.2f} ms"
        if unit == "µs":
            return f"{v:.1f} µs"
        return f"{v:,.0f}/s" if unit == "/s" else f"{v:,.1f}"

    w = max(len(x[0]) for x in rows) if rows else 10
    print(f"{'measure':<{w}}  {'ours':>12}  {'limit or peer (same run)':<52} {'':>12}  {'ratio':>7}  target")
    for measure, ours, unit, ref_label, ref, ratio, target, met in rows:
        flag = "" if met is None else ("  ok" if met else "  MISSED")
        ratio_s = f"{ratio:.2f}×" if ratio is not None else "—"
        print(f"{measure:<{w}}  {num(ours, unit):>12}  {ref_label:<52} {num(ref, unit):>12}  {ratio_s:>7}  {target}{flag}")

    for key, label in (("rate", "direct"), ("rate_lb", "through haproxy")):
        x = r.get(key)
        if not x:
            continue
        by_s, upd = x.get("ping_p99_by_second", {}), x.get("update_ms", {})
        print(f"(offered ~2,000 pings/s, {label}: {x['pings_per_s']:.0f} pings/s, p50 {x['ping_ms']['p50']:.2f} ms, "
              f"p99 {x['ping_ms']['p99']:.2f} ms, worst second's p99 {by_s.get('worst_ms', 0):.1f} ms, "
              f"{by_s.get('seconds_over_10ms', 0)} of {by_s.get('seconds', 0)} seconds with p99 > 10 ms; "
              f"status updates p50 {upd.get('p50', 0):.2f} ms p99 {upd.get('p99', 0):.2f} ms; "
              f"queue wait p50 {x['queue_wait_ms']['p50']:.0f} ms p99 {x['queue_wait_ms']['p99']:.0f} ms)")
    for k in ("peer_default", "peer_batched"):
        if r.get(k):
            p = r[k]
            print(f"({k}: graphile-worker {p['version']}, {p['jobs']} jobs in {p['seconds']:.2f} s, "
                  f"max_pool_size {p['max_pool_size']}, add_jobs {p['add_jobs_s']:.2f} s)")
    print("BENCH_JSON " + json.dumps({"figures": fig, "phases": r}, ensure_ascii=False, separators=(",", ":")))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
