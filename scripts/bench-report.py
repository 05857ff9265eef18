#!/usr/bin/env python3
"""Writes BENCHMARKS.md (to stdout) from the results scripts/bench collected in a directory,
and, when a second argument names an SVG file and matplotlib is installed, the chart of mist
against Redis and NATS.

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
CHART = sys.argv[2] if len(sys.argv) > 2 else None


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
slow = load_bench("slow.jsonl")
bursts = load_bench("connect-burst.jsonl")

S = {}
for sc in ["A", "B", "C", "D0", "D", "D0L", "DL", "E", "F"]:
    for sys_ in ["redis", "nats", "mist"]:
        S[(sc, sys_)] = summary(runs(anchors, sc, sys_))
for sc in ["A", "C", "E"]:
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
p("  its `scripts/anchors.sh`; scenario F, and the publisher with slow readers, for mist with `mist bench`")
p("  (`--stalled`, `--slow`; see below).")
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
we, te = S[("E", "mist-ws")], S[("E", "mist-tcp-w")]
if wa and ta:
    row("W-A fan-out with WebSocket subscribers: deliveries/s (TCP in brackets)", "—", "—",
        f"{num(wa['rate'])} ({num(ta['rate'])})", f"≥ 0.9× TCP: **{wa['rate'] / ta['rate']:.2f}×**, lost {wa['lost_max']}",
        wa["rate"] >= 0.9 * ta["rate"] and wa["lost_max"] == 0)
if wc and tc:
    row("W-C latency with WebSocket subscribers: p99 µs (TCP in brackets)", "—", "—",
        f"{num(wc['p99'])} ({num(tc['p99'])})", f"≤ 2× TCP: **{wc['p99'] / tc['p99']:.2f}×**",
        wc["p99"] <= 2 * tc["p99"] and wc["lost_max"] == 0)
if we and te:
    row("W-E 5,000 idle WebSocket subscribers: server KB per connection (TCP in brackets)", "—", "—",
        f"{num(we['rss'], 1)} ({num(te['rss'], 1)})", f"≤ 16 KB; lost {we['lost_max']}",
        we["rss"] <= 16 and we["lost_max"] == 0)

p("## Targets\n")
p("| scenario | Redis | NATS | mist | target, mist's ratio | |")
p("|---|---:|---:|---:|---|---|")
for name, r_, n_, m_, t_, ok in rows:
    p(f"| {name} | {r_} | {n_} | {m_} | {t_} | {mark(ok)} |")
p()

# The chart: per scenario, each system's median as a ratio to the better of Redis and NATS
# (higher is better, whatever the metric), with the min-max spread of its runs.
CHARTED = [
    # (label, scenario, value of one run, higher is better)
    ("A fan-out\ndeliveries/s", "A", lambda r: r["delivery_rate"], True),
    ("B fan-in\ndeliveries/s", "B", lambda r: r["delivery_rate"], True),
    ("C latency\np99", "C", lambda r: r["latency_us"]["p99"], False),
    ("C server CPU\nper delivery", "C", cpu_per_delivery, False),
    ("D0L fan-out\n2M msgs", "D0L", lambda r: r["delivery_rate"], True),
    ("DL with 100,000\nidle subscriptions", "DL", lambda r: r["delivery_rate"], True),
    ("E memory per\nidle subscriber", "E", rss_per_conn, False),
]


def chart_rows():
    """(label, {system: (ratio, low, high)}) for each charted scenario with all three systems."""
    out = []
    for label, sc, value, higher in CHARTED:
        vals = {}
        for sys_ in ["redis", "nats", "mist"]:
            vs = [value(r) for r in runs(anchors, sc, sys_)]
            vs = [v for v in vs if v]
            if vs:
                vals[sys_] = vs
        if len(vals) < 3:
            continue
        meds = {k: statistics.median(v) for k, v in vals.items()}
        best = max(meds["redis"], meds["nats"]) if higher else min(meds["redis"], meds["nats"])

        def ratio(v):
            return v / best if higher else best / v
        out.append((label, {k: (ratio(meds[k]), min(ratio(v) for v in vals[k]), max(ratio(v) for v in vals[k]))
                            for k in vals}))
    return out


def draw_chart(path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench-report: matplotlib is missing, no chart", file=sys.stderr)
        return False
    data = chart_rows()
    if not data:
        return False
    matplotlib.rcParams["svg.hashsalt"] = "mist"  # the same ids for the same figures
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text
    fig, ax = plt.subplots(figsize=(10, 4.2))
    colors = {"redis": "#c44e52", "nats": "#4c72b0", "mist": "#2ca02c"}
    names = {"redis": "Redis", "nats": "NATS", "mist": "mist"}
    width = 0.26
    for i, sys_ in enumerate(["redis", "nats", "mist"]):
        xs = [j + (i - 1) * width for j in range(len(data))]
        med_ = [d[1][sys_][0] for d in data]
        lo = [d[1][sys_][0] - d[1][sys_][1] for d in data]
        hi = [d[1][sys_][2] - d[1][sys_][0] for d in data]
        ax.bar(xs, med_, width, color=colors[sys_], label=names[sys_], yerr=[lo, hi], capsize=3,
               error_kw={"elinewidth": 1, "ecolor": "#333333"})
        if sys_ == "mist":
            for x, d in zip(xs, data):
                m, _, top = d[1][sys_]
                ax.annotate(f"{m:.2f}×", (x, top), textcoords="offset points", xytext=(0, 3),
                            ha="center", va="bottom", fontsize=8, fontweight="bold")
    ax.axhline(1.0, color="#555555", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(data)))
    ax.set_xticklabels([d[0] for d in data], fontsize=8)
    ax.set_ylabel("relative to the better of Redis and NATS\n(higher is better)", fontsize=9)
    ax.set_yscale("log")
    lows = [v[1] for d in data for v in d[1].values()]
    highs = [v[2] for d in data for v in d[1].values()]
    ax.set_ylim(min(lows + [1]) / 1.3, max(highs + [1]) * 1.4)
    ticks = [t for t in [1 / 16, 1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8, 16, 32]
             if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
    ax.set_yticks(ticks)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    n = min(len(runs(anchors, sc, s_)) for _, sc, _, _ in CHARTED for s_ in ["redis", "nats", "mist"]
            if runs(anchors, sc, "mist"))
    ax.set_title(f"mist, Redis and NATS on {cpus} vCPUs: medians of {n} runs, whiskers from the "
                 f"worst to the best run", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    return True


if CHART and draw_chart(CHART):
    p(f"![mist against Redis and NATS, per scenario]({os.path.basename(CHART)})\n")
    p("Each bar is a system's median as a ratio to the better of Redis and NATS in that scenario, turned so that")
    p("higher is better (for latency, CPU and memory: the better peer's figure over the system's); the whiskers")
    p("span the system's slowest and fastest runs, as ratios to the same median.\n")

# Losses of subscribers that read, run by run: the promise is that they lose nothing.


def loss_row(name, system, results, lost=lambda r: r["lost"], delivered=lambda r: r["delivered"]):
    if not results:
        return None
    losses = [lost(r) for r in results]
    return (name, system, len(results), sum(1 for x in losses if x), max(losses),
            sum(delivered(r) for r in results))


loss_rows = []
for sc in ["A", "B", "C"]:
    for sys_ in ["redis", "nats", "mist"]:
        loss_rows.append(loss_row(f"{sc} (pubbench)", sys_, runs(anchors, sc, sys_)))
for sc in ["A", "C", "E"]:
    loss_rows.append(loss_row(f"W-{sc}, WebSocket subscribers (pubbench)", "mist", runs(ws, sc, "mist-ws")))
for t in ["tcp", "ws"]:
    loss_rows.append(loss_row(f"fan-out over {t} (`mist bench`, 100 subscribers)", "mist",
                              [r for r in wbench if r["transport"] == t]))
loss_rows.append(loss_row("F: the 8 that read, beside 2 stalled (`mist bench --stalled 2`)", "mist", stall))
loss_rows.append(loss_row("3 readers, 1,000,000 × 100 B (`mist bench --subs 3`)", "mist",
                          [r for r in slow if r.get("kind") == "fast"]))
loss_rows = [r for r in loss_rows if r]
if loss_rows:
    p("## Subscribers that read lose nothing\n")
    p("Every run of every scenario, the subscribers that read as fast as they can (stalled and slow ones are")
    p("counted apart):\n")
    p("| scenario | system | runs | runs with a loss | most lost in a run | delivered in all runs |")
    p("|---|---|---:|---:|---:|---:|")
    for name, system, n, with_loss, worst, delivered in loss_rows:
        p(f"| {name} | {system} | {n} | {with_loss} | {num(worst)} | {num(delivered)} |")
    p()

if slow:
    p("## The publisher with fast, slow and stalled subscribers\n")
    p("One publisher sends 1,000,000 messages of 100 bytes to 3 subscribers that read as fast as they can")
    p("(`mist bench --subs 3`), that read 64 KiB and then pause 2 ms, a quarter of the publisher's rate")
    p("(`--subs 0 --slow 3 --slow-read 65536 --slow-pause 2`), or that never read (`--subs 0 --stalled 3`); a fresh")
    p("server per run. The publisher's time runs from its first message to the `pong` answering the `ping` after")
    p("its last: by then the server has queued or dropped every message. A publisher is never slowed down by")
    p("subscribers, so the three should be alike.\n")
    p("| subscribers | runs | publisher's time to its pong, s (min–max) | messages they lost, median (min–max) | losses announced, median |")
    p("|---|---:|---:|---:|---:|")
    for kind, label in [("fast", "3 that read as fast as they can"), ("slow", "3 that read 64 KiB per 2 ms"),
                        ("stalled", "3 that never read")]:
        rs = [r for r in slow if r.get("kind") == kind]
        if not rs:
            continue
        pong = [r.get("pong_secs") for r in rs]
        lo, hi = spread(pong)
        if kind == "fast":
            lost, told = [r["lost"] for r in rs], [r["dropped_notified"] for r in rs]
        elif kind == "slow":
            lost = [r["slow_expected"] - r["slow_delivered"] for r in rs]
            told = [r["slow_dropped_told"] for r in rs]
        else:
            lost, told = [], [r["stalled_dropped_told"] for r in rs]
        llo, lhi = spread(lost)
        lost_s = f"{num(med(lost))} ({num(llo)}–{num(lhi)})" if lost else "—"
        p(f"| {label} | {len(rs)} | {num(med(pong), 3)} ({num(lo, 3)}–{num(hi, 3)}) | {lost_s} | {num(med(told))} |")
    p()
    p("Slow subscribers are read until they have every message or its notice. Stalled ones are read once the run")
    p("is over, until their notice: what their queues and the kernel kept is delivered then.\n")
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
    p("`mist bench --scenario fanout --subs 100 --msgs 100000 --transport tcp|ws` (its readers are epoll")
    p("threads that parse lines and frames in place):\n")
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
    told = sum(1 for s in isolation if s["stalled_told"] == 1)
    if told or any(s["stalled_dropped_told"] for s in isolation):
        stalled_ = f"the stalled one was told of its losses in {told} of {len(isolation)} runs"
    else:
        stalled_ = "the stalled one lost nothing: its queue (64 MiB by default) held all it was sent"
    p(f"delivery rate to the 50 **{num(dr, 2)}×** those of the same run without it (medians); the 50 lost "
      f"{max(s['lost'] for s in isolation)} messages in the worst run; {stalled_}.\n")
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

def dso_shares(path):
    """Shares of a profile's samples by DSO: the kernel's, and the rest (mist's code, libc)."""
    kernel = rest = 0.0
    if os.path.exists(path):
        for line in open(path):
            m = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
            if m:
                if m.group(2).startswith("[kernel"):
                    kernel += float(m.group(1))
                else:
                    rest += float(m.group(1))
    return kernel, rest


def bound_wa(dso, r):
    """What bounds W-A, from its profile and its run."""
    kernel, rest = dso_shares(dso)
    line = (f"The kernel has {kernel:.0f}% of the server's samples, mist's own code and libc {rest:.0f}%")
    if r and r.get("server_cpu_secs"):
        line += (f"; the load generator, on the same {cpus} vCPUs, used "
                 f"{r['client_cpu_secs'] / r['server_cpu_secs']:.1f}× the server's CPU")
    p(line + ". What bounds it, and how it compares with A: \"WebSocket fan-out (W-A)\" under "
      "\"Where the time goes\".\n")


for sc, name in [("A", "A"), ("C", "C"), ("WA", "W-A")]:
    path = os.path.join(OUT, f"perf-{sc}.txt")
    dso = os.path.join(OUT, f"perf-{sc}-dso.txt")
    if os.path.exists(path) and os.path.getsize(path) > 0:
        p(f"### Profile of mist in scenario {name} (perf, cpu-clock, top frames)\n")
        run = load_bench(f"perf-{sc}.json")
        if run and run[0].get("delivered"):
            r = run[0]
            p(f"During the profiled run ({num(r['delivered'])} deliveries): {num(r['delivery_rate'])} deliveries/s, "
              f"server CPU {num(r['server_cpu_secs'], 2)} s ({num(cpu_per_delivery(r), 3)} µs per delivery), "
              f"load generator CPU {num(r['client_cpu_secs'], 2)} s, in {num(r['delivery_secs'], 2)} s on {cpus} vCPUs.\n")
        p("```")
        if os.path.exists(dso):
            p(open(dso).read().rstrip())
            p()
        p(open(path).read().rstrip())
        p("```\n")
        if sc == "WA":
            bound_wa(dso, run[0] if run else None)

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
