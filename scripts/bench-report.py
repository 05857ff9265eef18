#!/usr/bin/env python3
"""Writes BENCHMARKS.md (to stdout) from the results scripts/bench collected in a directory.

Every figure is the median of the runs made, with the min-max spread; ratios are taken between
medians measured in the same session, on the same machine.
"""

import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys

OUT = sys.argv[1]


def load(name):
    path = os.path.join(OUT, name)
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and line != "null":
                rows.append(json.loads(line))
    return rows


def runs(rows, scenario, system):
    return [r["result"] for r in rows
            if r["scenario"] == scenario and r["system"] == system and r.get("result")]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values):
    values = [v for v in values if v is not None]
    return (min(values), max(values)) if values else (None, None)


def cpu_per_delivery(r):
    return r["server_cpu_secs"] / r["delivered"] * 1e6 if r["delivered"] else None


def rss_per_conn(r):
    return (r["server_rss_setup_kb"] - r["server_rss_base_kb"]) / r["subs"] if r["subs"] else None


def summary(results):
    if not results:
        return None
    return {
        "n": len(results),
        "rate": med([r["delivery_rate"] for r in results]),
        "rate_spread": spread([r["delivery_rate"] for r in results]),
        "pub_rate": med([r["publish_rate"] for r in results]),
        "p50": med([r["latency_us"]["p50"] for r in results]),
        "p99": med([r["latency_us"]["p99"] for r in results]),
        "p99_spread": spread([r["latency_us"]["p99"] for r in results]),
        "cpu": med([cpu_per_delivery(r) for r in results]),
        "client_cpu": med([r["client_cpu_secs"] for r in results]),
        "lost_max": max(r["lost"] for r in results),
        "rss": med([rss_per_conn(r) for r in results]),
        "rss_spread": spread([rss_per_conn(r) for r in results]),
        "hwm": med([r["server_hwm_kb"] for r in results]),
        "ends": sorted({r["end"] for r in results}),
    }


def num(v, digits=0):
    if v is None:
        return "—"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def mark(ok):
    return "**met**" if ok else "**not met**"


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""


anchors = load("anchors.jsonl")
ws = load("ws.jsonl")


def load_bench(name):
    """`mist bench --json` outputs, one per line."""
    path = os.path.join(OUT, name)
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path) if line.strip() and line.strip() != "null"]


e10k = load_bench("e10k.jsonl")
stall = load_bench("stall.jsonl")
isolation = load_bench("isolation.jsonl")
wbench = load_bench("wbench.jsonl")
connects = load_bench("connect.jsonl")
bursts = load_bench("connect-burst.jsonl")

S = {}
for sc in ["A", "B", "C", "D0", "D", "D0L", "DL", "E", "F"]:
    for sys_ in ["redis", "nats", "mist"]:
        S[(sc, sys_)] = summary(runs(anchors, sc, sys_))
for sc in ["A", "C"]:
    S[(sc, "mist-tcp-w")] = summary(runs(ws, sc, "mist"))
    S[(sc, "mist-ws")] = summary(runs(ws, sc, "mist-ws"))
E10K = {
    "n": len(e10k),
    "rss": med([r.get("server_rss_per_conn_kb") for r in e10k]),
    "rss_spread": spread([r.get("server_rss_per_conn_kb") for r in e10k]),
    "lost_max": max([r["lost"] for r in e10k], default=None),
    "p99": med([r["latency_us"]["p99"] for r in e10k if r.get("latency_us")]),
    "ends": sorted({r["end"] for r in e10k}),
} if e10k else None

model = sh("lscpu | sed -n 's/^Model name: *//p'") or platform.processor()
mem = sh("free -g | awk '/^Mem:/{print $2}'")
kernel = platform.release()
cpus = os.cpu_count()
redis_v = sh("redis-server --version")
nats_v = sh("nats-server --version")
mist_v = sh("target/release/mist --version")
rustc_v = sh("rustc --version")
when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
n_runs = max([s["n"] for s in S.values() if s] or [0])

p = print
p("# mist benchmarks\n")
p(f"- **Date:** {when}.")
p(f"- **Machine:** {cpus} vCPU ({model}), {mem} GiB, Linux {kernel}. Servers and load generator share")
p("  the CPUs; all traffic is on loopback.")
p(f"- **Servers:** `{mist_v}` (release build, `{rustc_v}`); `{redis_v}`; `{nats_v}`. Each with")
p("  its defaults, a fresh process per run.")
p("- **Load generator:** pubbench (`../shared/pubbench`, the same client code for all three), run by")
p("  its `scripts/anchors.sh`; scenario F for mist with `mist bench --stalled` (see below).")
p(f"- **Runs:** {n_runs} per scenario and system. Every figure is the **median** of the runs, with the")
p("  min–max spread where it matters; ratios compare medians from this same session.")
p(f"- **Reproduce:** `scripts/bench` (raw JSON lines in `{OUT}/`).\n")

# The table of targets.
rows = []


def row(name, redis, nats, mist, target, ok):
    rows.append((name, redis, nats, mist, target, ok))


a = {k: S[("A", k)] for k in ["redis", "nats", "mist"]}
if all(a.values()):
    best = max(a["redis"]["rate"], a["nats"]["rate"])
    row("A fan-out, 1 → 100 (deliveries/s)", num(a["redis"]["rate"]), num(a["nats"]["rate"]), num(a["mist"]["rate"]),
        f"≥ 1.0× the better: **{a['mist']['rate'] / best:.2f}×**", a["mist"]["rate"] >= best and a["mist"]["lost_max"] == 0)
b = {k: S[("B", k)] for k in ["redis", "nats", "mist"]}
if all(b.values()):
    best = max(b["redis"]["rate"], b["nats"]["rate"])
    row("B fan-in, 4 → 1 (deliveries/s)", num(b["redis"]["rate"]), num(b["nats"]["rate"]), num(b["mist"]["rate"]),
        f"≥ 1.0× the better: **{b['mist']['rate'] / best:.2f}×**, lost {b['mist']['lost_max']}",
        b["mist"]["rate"] >= best and b["mist"]["lost_max"] == 0)
c = {k: S[("C", k)] for k in ["redis", "nats", "mist"]}
if all(c.values()):
    ok = c["mist"]["p99"] <= c["redis"]["p99"] and c["mist"]["cpu"] <= c["redis"]["cpu"] and c["mist"]["lost_max"] == 0
    row("C 100 subs at 5,000 msg/s: p99 µs / server CPU µs per delivery",
        f"{num(c['redis']['p99'])} / {num(c['redis']['cpu'], 2)}", f"{num(c['nats']['p99'])} / {num(c['nats']['cpu'], 2)}",
        f"{num(c['mist']['p99'])} / {num(c['mist']['cpu'], 2)}",
        f"≤ Redis: p99 **{c['mist']['p99'] / c['redis']['p99']:.2f}×**, CPU **{c['mist']['cpu'] / c['redis']['cpu']:.2f}×**", ok)


def dratio(sys_, base, noisy):
    s0, s1 = S[(base, sys_)], S[(noisy, sys_)]
    return s1["rate"] / s0["rate"] if s0 and s1 else None


if S[("DL", "mist")] and S[("D0L", "mist")]:
    rl = {k: dratio(k, "D0L", "DL") for k in ["redis", "nats", "mist"]}
    rs = {k: dratio(k, "D0", "D") for k in ["redis", "nats", "mist"]}
    lost = max(S[(x, "mist")]["lost_max"] for x in ["D0", "D", "D0L", "DL"] if S[(x, "mist")])
    row("D 100,000 non-matching subscriptions: rate with / without (2M messages; 200k in brackets)",
        f"{num(rl['redis'], 2)} ({num(rs['redis'], 2)})", f"{num(rl['nats'], 2)} ({num(rs['nats'], 2)})",
        f"{num(rl['mist'], 2)} ({num(rs['mist'], 2)})", f"≥ 0.95, lost {lost}", rl["mist"] >= 0.95 and lost == 0)
e5 = {k: S[("E", k)] for k in ["redis", "nats", "mist"]}
if all(e5.values()):
    ok = e5["mist"]["rss"] <= 20 and e5["mist"]["lost_max"] == 0
    if E10K:
        ok = ok and E10K["rss"] <= 20 and E10K["lost_max"] == 0
    else:
        ok = False
    row("E 5,000 subs at 50 msg/s: server KB per connection (mist at 10,000 in brackets)",
        num(e5["redis"]["rss"], 1), num(e5["nats"]["rss"], 1),
        f"{num(e5['mist']['rss'], 1)} ({num(E10K['rss'], 1) if E10K else '—'})",
        f"≤ 20 KB at both; lost {e5['mist']['lost_max']} ({E10K['lost_max'] if E10K else '—'})", ok)
if stall:
    pr = med([s.get("stall_publish_ratio") for s in stall])
    dr = med([s.get("stall_delivery_ratio") for s in stall])
    lost = max(s["lost"] for s in stall)
    told = min(s["stalled_told"] for s in stall)
    row("F 8 subs + 2 stalled vs the 8 alone: publish rate / delivery rate ratio",
        "drops the 2 after 1 s", "throttles the publisher", f"{num(pr, 2)} / {num(dr, 2)}",
        f"within 10%; lost {lost}; stalled told: {told} of 2 in every run",
        pr is not None and dr is not None and pr >= 0.9 and dr >= 0.9 and lost == 0 and told == 2)
wa, ta, wc, tc = S[("A", "mist-ws")], S[("A", "mist-tcp-w")], S[("C", "mist-ws")], S[("C", "mist-tcp-w")]
if wa and ta:
    row("W-A fan-out with WebSocket subscribers: deliveries/s (TCP in brackets)", "—", "—",
        f"{num(wa['rate'])} ({num(ta['rate'])})", f"≥ 0.5× TCP: **{wa['rate'] / ta['rate']:.2f}×**, lost {wa['lost_max']}",
        wa["rate"] >= 0.5 * ta["rate"] and wa["lost_max"] == 0)
if wc and tc:
    row("W-C latency with WebSocket subscribers: p99 µs (TCP in brackets)", "—", "—",
        f"{num(wc['p99'])} ({num(tc['p99'])})", f"≤ 2× TCP: **{wc['p99'] / tc['p99']:.2f}×**",
        wc["p99"] <= 2 * tc["p99"] and wc["lost_max"] == 0)

p("## Targets\n")
p("| scenario | Redis | NATS | mist | target, mist's ratio | |")
p("|---|---:|---:|---:|---|---|")
for name, r_, n_, m_, t_, ok in rows:
    p(f"| {name} | {r_} | {n_} | {m_} | {t_} | {mark(ok)} |")
p()

p("## All figures (medians)\n")
p("| scenario | system | deliveries/s (min–max) | publish/s | p50 µs | p99 µs (min–max) | server CPU µs/delivery | client CPU s | lost (worst run) | RSS KB/conn | end |")
p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for (sc, sys_), s in S.items():
    if not s:
        continue
    lo, hi = s["rate_spread"]
    plo, phi = s["p99_spread"]
    label = "mist (TCP, W run)" if sys_ == "mist-tcp-w" else sys_
    p(f"| {sc} | {label} | {num(s['rate'])} ({num(lo)}–{num(hi)}) | {num(s['pub_rate'])} | {num(s['p50'])} | "
      f"{num(s['p99'])} ({num(plo)}–{num(phi)}) | {num(s['cpu'], 3)} | {num(s['client_cpu'], 2)} | {s['lost_max']} | "
      f"{num(s['rss'], 1)} | {', '.join(s['ends'])} |")
p()
p("Scenario commands (pubbench, 64-byte payloads): A `--subs 100 --msgs 100000`; B `--subs 1 --pubs 4 --msgs 250000`;")
p("C `--subs 100 --msgs 20000 --rate 5000`; D0/D `--subs 1 --msgs 200000` without/with `--noise-subs 100000 --noise-conns 10`;")
p("D0L/DL the same with 2,000,000 messages; E `--subs 5000 --msgs 200 --rate 50`;")
p("F `--subs 10 --slow-subs 2 --msgs 1000000`. RSS per connection is (RSS once all are subscribed − RSS before) / subscribers.\n")
p("In F as pubbench runs it, the delivery rate and loss include the two slow subscribers' trickle, so")
p("the F target is measured with `mist bench --scenario fanout --subs 8 --stalled 2 --msgs 1000000 --compare`:")
p("8 subscribers that read, 2 that never do, against the same run without the 2.\n")
if E10K:
    lo, hi = E10K["rss_spread"]
    p(f"E at 10,000 subscribers (mist only, `mist bench --scenario conns --subs 10000 --msgs 200 --rate 50`,")
    p(f"{E10K['n']} runs; pubbench needs two descriptors per subscriber, more than this machine's hard limit of")
    p(f"20,000): **{num(E10K['rss'], 1)} KB per connection** ({num(lo, 1)}–{num(hi, 1)}), p99 {num(E10K['p99'])} µs,")
    p(f"worst run lost {E10K['lost_max']}, ended {', '.join(E10K['ends'])}.\n")
if stall:
    p("| F run | publish rate with / without | delivery rate to the 8, with / without | lost (the 8) | stalled told (dropped) |")
    p("|---|---:|---:|---:|---|")
    for i, s in enumerate(stall, 1):
        b_ = s["baseline"]
        p(f"| {i} | {num(s['publish_rate'])} / {num(b_['publish_rate'])} | {num(s['delivery_rate'])} / {num(b_['delivery_rate'])} | "
          f"{s['lost']} | {s['stalled_told']} of {s['stalled']} ({num(s['stalled_dropped_told'])}) |")
    p()

if wbench:
    def wb(t, key):
        return med([r[key] for r in wbench if r["transport"] == t and r.get(key) is not None])
    t_rate, w_rate = wb("tcp", "delivery_rate"), wb("ws", "delivery_rate")
    p("### W with mist bench's own clients\n")
    p("`mist bench --scenario fanout --subs 100 --msgs 100000 --transport tcp|ws` (its WebSocket reader parses")
    p("frames in place; pubbench's tungstenite client allocates per frame):\n")
    p("| transport | deliveries/s | server CPU µs/delivery | client CPU s | lost (worst run) |")
    p("|---|---:|---:|---:|---:|")
    for t in ["tcp", "ws"]:
        rs = [r for r in wbench if r["transport"] == t]
        if rs:
            p(f"| {t} | {num(wb(t, 'delivery_rate'))} | {num(wb(t, 'server_cpu_us_per_delivery'), 3)} | "
              f"{num(wb(t, 'client_cpu_secs'), 2)} | {max(r['lost'] for r in rs)} |")
    if t_rate and w_rate:
        p(f"\nWebSocket / TCP delivery rate with these clients: **{w_rate / t_rate:.2f}×**.\n")
if isolation:
    pr = med([s.get("stall_publish_ratio") for s in isolation])
    dr = med([s.get("stall_delivery_ratio") for s in isolation])
    p("### Isolation: 50 subscribers with one stalled\n")
    p("`mist bench --scenario fanout --subs 50 --stalled 1 --msgs 200000 --compare`, "
      f"{len(isolation)} runs: with the stalled subscriber present, the publish rate is **{num(pr, 2)}×** and the")
    p(f"delivery rate to the 50 **{num(dr, 2)}×** those of the same run without it (medians); the 50 lost "
      f"{max(s['lost'] for s in isolation)} messages in the worst run; the stalled one was told of its losses in "
      f"{sum(1 for s in isolation if s['stalled_told'] == 1)} of {len(isolation)} runs.\n")
if connects:
    p("### WebSocket connects per second, by token store\n")
    p("`mist bench --scenario connect --conns 1000 --threads 50` (1,000 connections opened in a burst and kept open;")
    p("each connect checks its token in the store):\n")
    p("| token store | connects/s (median, min–max) | connected (worst run) | runs |")
    p("|---|---:|---:|---:|")
    for store in ["memory", "postgres"]:
        rs = [c for c in connects if c.get("store") == store]
        if rs:
            lo, hi = spread([c["connects_per_sec"] for c in rs])
            p(f"| {store} | {num(med([c['connects_per_sec'] for c in rs]))} ({num(lo)}–{num(hi)}) | "
              f"{min(c['connected'] for c in rs)} of {rs[0]['conns']} | {len(rs)} |")
    p()

if bursts:
    def pct(key, p):
        return [b[key][p] / 1000 if b.get(key) else None for b in bursts]
    p("### A burst of 5,000 WebSocket connects\n")
    p("`mist bench --scenario connect --conns 5000 --threads 1000` (1,000 threads connect at once, as when a")
    p("load balancer fails clients over to this node; a SYN dropped for a full listen backlog is sent again after 1 s):\n")
    p("| | p50 ms | p99 ms | max ms |")
    p("|---|---:|---:|---:|")
    for key, name in [("tcp_connect_us", "TCP connect"), ("latency_us", "whole handshake (to the `101`)")]:
        p(f"| {name} | {num(med(pct(key, 'p50')), 2)} | {num(med(pct(key, 'p99')), 2)} | {num(med(pct(key, 'max')), 2)} |")
    p(f"\n{num(med([b['connects_per_sec'] for b in bursts]))} connects/s; "
      f"{min(b['connected'] for b in bursts)} of {bursts[0]['conns']} connected in the worst of {len(bursts)} runs.\n")

for sc in ["A", "C"]:
    path = os.path.join(OUT, f"perf-{sc}.txt")
    dso = os.path.join(OUT, f"perf-{sc}-dso.txt")
    if os.path.exists(path) and os.path.getsize(path) > 0:
        p(f"### Profile of mist in scenario {sc} (perf, cpu-clock, top frames)\n")
        p("```")
        if os.path.exists(dso):
            p(open(dso).read().rstrip())
            p()
        p(open(path).read().rstrip())
        p("```\n")

def wa_shares(path):
    """CPU shares of the whole machine during W-A, by who used it (perf --sort comm)."""
    groups = {}
    for line in open(path):
        m = re.match(r"\s*([\d.]+)%\s+(.*\S)", line)
        if not m:
            continue
        share, comm = float(m.group(1)), m.group(2)
        if re.fullmatch(r"sub\d+", comm):
            who = "load generator: 100 WebSocket subscriber threads"
        elif re.fullmatch(r"pub\d+", comm):
            who = "load generator: publisher thread"
        elif comm.startswith("mist"):
            who = "mist (all its threads)"
        elif comm == "swapper":
            who = "idle"
        else:
            who = "other processes"
        groups[who] = groups.get(who, 0.0) + share
    return sorted(groups.items(), key=lambda kv: -kv[1])


wa_comm = os.path.join(OUT, "perf-WA-comm.txt")
if os.path.exists(wa_comm) and os.path.getsize(wa_comm) > 0:
    p("### Profile of the whole machine in scenario W-A (perf -a, cpu-clock, 1 s mid-run)\n")
    p("Share of both CPUs' samples, by who used them:\n")
    p("| used by | share |")
    p("|---|---:|")
    for who, share in wa_shares(wa_comm):
        p(f"| {who} | {share:.1f}% |")
    p()
    subs = os.path.join(OUT, "perf-WA-subs.txt")
    if os.path.exists(subs) and os.path.getsize(subs) > 0:
        p("Top frames of the load generator's subscriber threads (share of all samples):\n")
        p("```")
        p(open(subs).read().rstrip())
        p("```\n")

notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-notes.md")
if os.path.exists(notes):
    p(open(notes).read().rstrip())

cluster = os.path.join(OUT, "cluster.md")
if os.path.exists(cluster) and os.path.getsize(cluster) > 0:
    p()
    p("<!-- cluster:begin -->")
    p(open(cluster).read().rstrip())
    p("<!-- cluster:end -->")
