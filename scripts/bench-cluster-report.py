#!/usr/bin/env python3
"""Writes the cross-node section of BENCHMARKS.md (to stdout) from what scripts/bench-cluster
collected in a directory: medians of the runs, with the min-max spread."""

import datetime, json, os, platform, statistics, subprocess, sys

out = sys.argv[1]
rows = [json.loads(l) for l in open(os.path.join(out, "cluster.jsonl")) if l.strip() not in ("", "null")]

def pick(mode, kind):
    return [r for r in rows if r["mode"] == mode and r["kind"] == kind]

def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None

def msg_rate(r):
    # Messages per second that reached every subscriber: deliveries over subscribers.
    return r["delivery_rate"] / r["subs"]

def fmt(v, digits=0):
    return "—" if v is None else f"{v:,.{digits}f}"

def spread(vals, digits=0):
    return f"{fmt(min(vals), digits)}–{fmt(max(vals), digits)}" if vals else "—"

cpu = platform.processor() or "?"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
pg = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
# When the runs ended: the time of their last result.
ended = os.path.getmtime(os.path.join(out, "cluster.jsonl"))
now = datetime.datetime.fromtimestamp(ended, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
def loadavg(name):
    path = os.path.join(out, name)
    return open(path).read().split()[0] if os.path.exists(path) else "?"

print("## Across two nodes (`cluster postgres`)\n")
print(f"- **Date:** {now}; {os.cpu_count()} vCPU ({cpu}); {pg}.")
print(f"- **Load:** other work shared the machine: load average {loadavg('loadavg-start')} before the runs,")
print(f"  {loadavg('loadavg-end')} after. Figures move from run to run; the one-node runs, interleaved with the")
print("  cross-node ones, ran in the same conditions.")
print("- **Set-up:** two `mist -d` nodes and PostgreSQL on the same machine (with the load")
print("  generator: all share the CPUs). The publisher connects to one node, the 10 subscribers")
print("  to the other (`mist bench --pub-addr`), so every message crosses PostgreSQL")
print("  (LISTEN/NOTIFY). \"One node\" is the same run on one plain server. 64-byte messages,")
print(f"  medians of {max(len(pick('cross', 'throughput')), 1)} runs with the min–max spread; fresh servers per run.")
print("- **Reproduce:** `scripts/bench-cluster` (raw JSON lines in `target/bench-cluster-*/`).\n")
print("| run | messages/s to every subscriber (min–max) | publish/s | lost (worst run) | p50 µs | p99 µs (min–max) |")
print("|---|---:|---:|---:|---:|---:|")
summary = {}
for kind in ("throughput", "latency"):
    for mode, name in (("cross", "across two nodes"), ("one", "one node")):
        rs = pick(mode, kind)
        if not rs:
            continue
        r0 = rs[0]
        if kind == "throughput":
            title = f"1 → {r0['subs']}, {r0['msgs_per_pub']:,} messages"
        else:
            title = f"1 → {r0['subs']} at {r0['rate']:,.0f} msg/s"
        rates = [msg_rate(r) for r in rs]
        p99s = [r["latency_us"]["p99"] for r in rs]
        summary[(mode, kind)] = (med(rates), med(p99s), max(r["lost"] for r in rs))
        print(f"| {title}, {name} | {fmt(med(rates))} ({spread(rates)}) | {fmt(med(r['publish_rate'] for r in rs))} "
              f"| {max(r['lost'] for r in rs)} | {fmt(med(r['latency_us']['p50'] for r in rs), 1)} "
              f"| {fmt(med(p99s), 1)} ({spread(p99s, 1)}) |")
print()
ct, cl = summary.get(("cross", "throughput")), summary.get(("cross", "latency"))
ot, ol = summary.get(("one", "throughput")), summary.get(("one", "latency"))
if ct and ot:
    met = "met" if ct[0] >= 250_000 and ct[2] == 0 else "not met"
    print(f"- Target ≥ 250,000 messages/s across nodes with nothing lost: **{fmt(ct[0])}**, "
          f"worst run lost {ct[2]}: **{met}**; {ct[0] / ot[0]:.2f}× one node.")
pg = [r["tps"] for r in pick("pgbench", "notify")]
if pg:
    tps = med(pg)
    print(f"- PostgreSQL alone (pgbench, 4 clients, 5 s, {len(pg)} runs): **{fmt(tps)}** transactions/s of one "
          f"7,900-byte NOTIFY ({fmt(min(pg))}–{fmt(max(pg))}), {tps * 7900 / 1e6:.0f} MB/s of payload; packed "
          f"like the bus packs 64-byte messages (about {7900 // 71} to a payload), some "
          f"{fmt(tps * (7900 // 71))} messages/s.")
if cl and ol:
    met = "met" if cl[1] < 10_000 else "not met"
    print(f"- Target p99 under 10 ms across nodes at 2,000 msg/s: **{fmt(cl[1] / 1000, 2)} ms**: **{met}**; "
          f"one node {fmt(ol[1] / 1000, 2)} ms.")
