#!/usr/bin/env python3
"""mist reliability soak: mixed load against a fresh `mist -d` for SOAK_SECONDS, then checks.

Run it through `scripts/soak` (which builds the release binary first). It fails (exit code 1)
when:

- the server's VmRSS grows by more than 10% between just after warm-up and the end of the load
  (median of the 1 Hz samples in a window after warm-up vs median of the last window);
- its threads (/proc/PID/status Threads) or open descriptors (/proc/PID/fd) do not come back to
  the baseline taken before any client connected, once every client has left;
- a healthy subscriber misses a message it was owed, gets a message twice, out of order, with
  the wrong tags or data, or through no subscription of its own, or gets a slow-consumer notice;
- a stalled subscriber loses owed messages it is not told about;
- the server dies, stops answering `ping`, or a reply does not come;
- (and a few cross-checks: /metrics counts, revocation notices, `list` replies, clean exit on
  SIGTERM, no ERROR or panic in its log).

What a subscriber is owed. Every message carries its publisher's id and a sequence number. A
publisher records `started` (the highest sequence number it has begun to write) before each
write, and `acked` (the last sequence number written before a `ping` whose `pong` came back)
after each barrier: by then every one of those messages is queued for every subscriber. A
subscription is in effect once the `pong` after its `subscribe` arrives: every message a
publisher starts writing after that moment (sequence number > its `started` then) is matched
against it. It stops being owed anything when the client sends `unsubscribe`, leaves, or has
its token revoked: only messages `acked` before that moment are owed (before leaving, the
client sends a `ping` and reads everything up to its `pong`, which comes after all of them).
A message is owed when one subscription in effect matches it (subscription tags within the
message's tags).

The load (about 630 messages/s on average, with bursts; a fraction of a CPU for the server and
for this script): 4 steady publishers (40-160 messages/s), a bursty one (300-1500 at once every
4-10 s) and a bulk one (8 KiB messages, 100/s), each replaced by a new connection every 40-150 s;
TCP and WebSocket subscribers that come and go every 3-25 s and change their subscriptions
(from everything to tags nobody publishes) every 0.5-4 s, plus a few that stay all along; a
stalled TCP and a stalled WebSocket subscriber (read a few seconds, stop reading for
STALL_SECONDS, ...); subscribers that never read again after subscribing, which the server
must disconnect after write_timeout; an admin connection that registers, sets, unsets,
queries and unregisters tokens, and revokes the tokens of some WebSocket subscribers (unset
tags or unregister); GET /metrics and /ping every 5 s; a monitor that pings every second.

Environment: SOAK_SECONDS (default 600), SOAK_SEED (random), SOAK_BIN (a mist binary to use
instead of target/release/mist; scripts/soak then skips the build), SOAK_EXTRA_CONFIG (config
lines, "\\n"-separated, replacing the soak's own settings of the same keys: e.g.
"client_queue 32" makes healthy subscribers lose messages in bursts, and the soak fail).
Output goes to target/soak/: mist.conf, mist.log, samples.csv (RSS, threads, fds at 1 Hz).
"""

import array
import collections
import datetime
import http.client
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback

try:
    import websockets.exceptions
    import websockets.sync.client
except ImportError:  # pragma: no cover
    sys.exit("scripts/soak: the Python package `websockets` is missing "
             "(python3 -m pip install 'websockets>=12')")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO, "target", "soak")
HOST = "127.0.0.1"

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
SEED = int(os.environ.get("SOAK_SEED", str(random.randrange(1 << 30))))
MIST = os.environ.get("SOAK_BIN") or os.path.join(REPO, "target", "release", "mist")
EXTRA_CONFIG = os.environ.get("SOAK_EXTRA_CONFIG", "").replace("\\n", "\n")

# Warm-up: the first 10% of the run, or a third of it up to 60 s, whichever is longer (60 s for
# the 10-minute soak, 20 s for a 60 s run). The RSS after warm-up is the median of the samples
# of the following WINDOW seconds; the RSS at the end, the median of the last WINDOW.
WARMUP = max(0.10 * SOAK_SECONDS, min(60.0, SOAK_SECONDS / 3))
WINDOW = max(5.0, min(30.0, 0.05 * SOAK_SECONDS))
RSS_LIMIT = 0.10
PROGRESS_EVERY = 30.0
REPLY_TIMEOUT = 20.0     # a reply (pong, list, ...) not there after this is a failure
PING_TIMEOUT = 10.0      # the monitor's ping
SETTLE_TIMEOUT = 30.0    # threads and descriptors back to the baseline after the last client

# Server settings: small queues so the stalled subscribers lose messages within seconds (the
# healthy ones read promptly and have the kernel's socket buffers besides; 64 KiB was too
# little for a Python WebSocket client during a burst), and a write timeout the zombie
# subscribers reach while the stalled ones (STALL_SECONDS) never do.
WRITE_TIMEOUT = 20
STALL_SECONDS = 8.0
CONFIG = f"""\
log_level WARN
client_queue 2048
client_queue_bytes 262144
write_timeout {WRITE_TIMEOUT}
"""

# Load. Steady publishers (messages per second), one bursty one, and one of bulk messages
# (8 KiB at BULK_RATE: what fills a stalled subscriber's socket buffers and queue within
# seconds, so that it loses messages).
STEADY_RATES = [40, 80, 120, 160]
BURST_SIZE = (300, 1500)
BURST_GAP = (4.0, 10.0)
BULK_RATE = 100
BULK_BYTES = 8192
PUBLISHER_LIFE = (40.0, 150.0)          # then it leaves and a new one takes its place
TCP_CHURN_SLOTS = 6
TCP_LONG = 2
WS_CHURN_SLOTS = 3
WS_LONG = 1
SESSION_LIFE = (3.0, 25.0)
ACTION_GAP = (0.5, 4.0)
MAX_SUBS = 4

COLORS = ["red", "green", "blue", "gold"]
SHAPES = ["circle", "square", "star", "hex", "tri"]
NOISE = 40
PUB_SLOTS = len(STEADY_RATES) + 2
PUB_TAGS = [f"pub-{i}" for i in range(PUB_SLOTS)]

# Message data: "PUBLISHER SEQ PAD", the pad a deterministic slice of this (spaces, non-ASCII),
# so that every delivery's data can be checked byte for byte. Bulk publishers' ids start with
# "b" and their pads are BULK_BYTES long.
PAD_BASE = ("the quick brown fox jumps over the lazy dog \u00e9\u00fc \u6f22\u5b57 "
            "0123456789 ") * 200


def pad_for(seq, bulk=False):
    if bulk:
        n = BULK_BYTES
    else:
        n = 3000 if seq % 499 == 7 else (seq * 37) % 240 + 1
    off = seq % 50
    return PAD_BASE[off:off + n]


def data_for(pid, seq):
    return f"{pid} {seq} {pad_for(seq, pid[0] == 'b')}"


T0 = time.monotonic()


def now():
    return time.monotonic() - T0


def log(msg):
    print(f"[{now():6.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Shared state
# ---------------------------------------------------------------------------------------------

STOP_LOAD = threading.Event()     # time is up: publishers finish, nobody new starts
STOP_SUBS = threading.Event()     # publishers are done: subscribers do their last barrier
ABORT = threading.Event()         # the server died or stopped answering
FATAL = []

VIOLATIONS = []
VIOLATION_KINDS = collections.Counter()
VLOCK = threading.Lock()


def violation(kind, msg):
    with VLOCK:
        VIOLATION_KINDS[kind] += 1
        VIOLATIONS.append(f"{kind}: {msg}")
        shown = VIOLATION_KINDS[kind] <= 5
    if shown:
        log(f"VIOLATION {kind}: {msg}")


def fatal(msg):
    with VLOCK:
        FATAL.append(msg)
    violation("server", msg)
    ABORT.set()


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = collections.Counter()

    def add(self, key, n=1):
        with self.lock:
            self.c[key] += n

    def __getitem__(self, key):
        with self.lock:
            return self.c[key]


STATS = Stats()


class Catalogue:
    """Interned message tag sets: a message's tags are stored as one small index."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sets = []
        self.strs = []
        self.index = {}

    def intern(self, tags):
        key = frozenset(tags)
        with self.lock:
            i = self.index.get(key)
            if i is None:
                i = len(self.sets)
                self.sets.append(key)
                self.strs.append(",".join(sorted(key)))
                self.index[key] = i
            return i


CAT = Catalogue()


class Pub:
    """One publisher connection's record: the tags of each message it sent, and its marks."""

    def __init__(self, pid):
        self.pid = pid
        self.log = array.array("I")   # catalogue index of each sequence number
        self.started = -1             # highest seq whose write has begun
        self.acked = -1               # highest seq covered by a pong
        self.closed = False


REG = {}
REG_LOCK = threading.Lock()


def register_pub(pid):
    p = Pub(pid)
    with REG_LOCK:
        REG[pid] = p
    return p


def snap_started():
    with REG_LOCK:
        return {pid: p.started for pid, p in REG.items()}


def snap_acked():
    with REG_LOCK:
        return {pid: p.acked for pid, p in REG.items()}


ALL_SESSIONS = []
SESS_LOCK = threading.Lock()


def tagstr(tags, rng=None):
    """A tag list as sent: in a random order, sometimes with a duplicate (both are folded)."""
    t = list(tags)
    if rng is not None:
        rng.shuffle(t)
        if rng.random() < 0.2:
            t.append(rng.choice(t))
    return ",".join(t)


# ---------------------------------------------------------------------------------------------
# Connections
# ---------------------------------------------------------------------------------------------

def tcp_connect(port, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(10)
    s.connect((HOST, port))
    STATS.add("tcp_connections")
    return s


class Lines:
    """Newline framing over a socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def read(self, timeout):
        """The complete lines that arrived within `timeout` (maybe none); None at the end."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 18)
        except (socket.timeout, BlockingIOError):
            return []
        except (ConnectionResetError, BrokenPipeError):
            return None
        if not data:
            return None
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        return lines

    def until_pong(self, timeout, what):
        """Reads until a `pong`; returns the lines before it."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what}: no pong within {timeout:.0f} s")
            lines = self.read(min(left, 1.0))
            if lines is None:
                raise ConnectionError(f"{what}: the server closed the connection")
            for i, line in enumerate(lines):
                if line == b"pong":
                    rest = lines[i + 1:]
                    if rest or self.buf:
                        # Put back what came after the pong.
                        self.buf = b"\n".join(rest) + (b"\n" if rest else b"") + self.buf
                    return got
                got.append(line)


class Admin:
    """The admin connection (TCP, from loopback), shared by every thread under a lock."""

    def __init__(self, port):
        self.port = port
        self.lock = threading.Lock()
        self.sock = tcp_connect(port)
        self.lines = Lines(self.sock)
        self.ops = 0

    def cmd(self, line, expect_error=False):
        """Sends `line` and a ping; returns the reply lines that came before the pong."""
        with self.lock:
            self.sock.sendall(line.encode() + b"\nping\n")
            try:
                got = [x.decode("utf-8", "replace") for x in
                       self.lines.until_pong(REPLY_TIMEOUT, f"admin `{line.split()[0]}`")]
            except (TimeoutError, ConnectionError) as e:
                fatal(str(e))
                raise
            self.ops += 1
        STATS.add("admin_ops")
        errors = [g for g in got if g.startswith("error")]
        if expect_error and not errors:
            violation("admin", f"`{line}` should have failed; got {got}")
        if not expect_error and errors:
            violation("admin", f"`{line}` failed: {errors}")
        return got

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# Publishers
# ---------------------------------------------------------------------------------------------

class Publisher(threading.Thread):
    """Publishes at `rate` messages per second, or in bursts when `rate` is None; `bulk`: big
    messages that also carry the tag `bulk`."""

    def __init__(self, slot, port, rate=None, bulk=False):
        super().__init__(name=f"pub-{slot}", daemon=True)
        self.slot, self.port, self.rate, self.bulk = slot, port, rate, bulk
        self.rng = random.Random(SEED * 1000 + slot)
        self.gen = 0

    def message_tags(self):
        rng = self.rng
        tags = {"soak", PUB_TAGS[self.slot], rng.choice(COLORS)}
        if self.bulk:
            tags.add("bulk")
            return tags
        tags.update(rng.sample(SHAPES, rng.choice((0, 1, 1, 2))))
        if rng.random() < 0.3:
            tags.add(f"n{rng.randrange(NOISE)}")
        return tags

    def run(self):
        try:
            while not STOP_LOAD.is_set() and not ABORT.is_set():
                self.incarnation()
        except Exception as e:  # noqa: BLE001
            if not ABORT.is_set():
                fatal(f"publisher {self.name}: {e!r}\n{traceback.format_exc()}")

    def incarnation(self):
        self.gen += 1
        pub = register_pub(f"{'b' if self.bulk else 'p'}{self.slot}.{self.gen}")
        sock = tcp_connect(self.port)
        lines = Lines(sock)
        life_end = time.monotonic() + self.rng.uniform(*PUBLISHER_LIFE)
        begin = time.monotonic()
        sent = 0
        next_barrier = begin + 0.25
        next_burst = begin + self.rng.uniform(*BURST_GAP)
        try:
            while not STOP_LOAD.is_set() and not ABORT.is_set() and time.monotonic() < life_end:
                t = time.monotonic()
                if self.rate is not None:
                    n = min(int((t - begin) * self.rate) - sent, 400)
                else:
                    n = 0
                    if t >= next_burst:
                        n = self.rng.randint(*BURST_SIZE)
                        next_burst = t + self.rng.uniform(*BURST_GAP)
                if n > 0:
                    self.publish(sock, pub, n)
                    sent += n
                if t >= next_barrier or (self.rate is None and n > 0):
                    self.barrier(sock, lines, pub)
                    next_barrier = t + 0.25
                time.sleep(0.01)
            self.barrier(sock, lines, pub)
        finally:
            pub.closed = True
            sock.close()

    def publish(self, sock, pub, n):
        out = []
        for _ in range(n):
            tags = self.message_tags()
            seq = len(pub.log)
            pub.log.append(CAT.intern(tags))
            out.append(f"publish {tagstr(tags, self.rng)} {data_for(pub.pid, seq)}\n")
        pub.started = len(pub.log) - 1     # before the bytes leave
        sock.sendall("".join(out).encode())
        STATS.add("published", n)

    def barrier(self, sock, lines, pub):
        last = len(pub.log) - 1
        sock.sendall(b"ping\n")
        got = lines.until_pong(REPLY_TIMEOUT, f"publisher {pub.pid}")
        for g in got:
            violation("publisher", f"{pub.pid} got {g[:200]!r}")
        pub.acked = last


# ---------------------------------------------------------------------------------------------
# Subscribers: the bookkeeping shared by TCP and WebSocket
# ---------------------------------------------------------------------------------------------

class Rec:
    """One subscription of one client, from `subscribe` to `unsubscribe`/revocation/leaving."""

    def __init__(self, tags):
        self.tags = frozenset(tags)
        self.start = None     # publishers' `started` when the subscription was in effect
        self.end = None       # publishers' `acked` when it stopped being owed anything
        self.live = True      # deliveries through it are possible (subscribe sent, not gone)
        self.revoked = False  # removed by the admin (unset), notice expected
        self.cache = {}

    def matches(self, idx):
        m = self.cache.get(idx)
        if m is None:
            m = self.cache[idx] = self.tags <= CAT.sets[idx]
        return m

    def sorted_str(self):
        return ",".join(sorted(self.tags))


class Session:
    """One subscriber connection's bookkeeping and checks."""

    def __init__(self, name, transport, healthy):
        self.name = name
        self.transport = transport
        self.healthy = healthy
        self.recs = []
        self.bits = {}           # pid -> bytearray, 1 = received
        self.last = {}           # pid -> last seq received
        self.received = 0
        self.notices = []        # dropped counts from slow-consumer notices
        self.owed = 0
        self.missing = 0
        self.bad = collections.Counter()
        self.after_revoke = None  # publishers' `started` once an unregister was answered
        with SESS_LOCK:
            ALL_SESSIONS.append(self)

    def bad_thing(self, kind, msg):
        self.bad[kind] += 1
        if self.bad[kind] <= 3:
            violation(kind, f"{self.name}: {msg}")

    def live_recs(self):
        return [r for r in self.recs if r.live]

    def active(self):
        """Subscriptions held, as the server sees them once earlier commands are applied."""
        return [r for r in self.recs if r.end is None and r.live]

    def deliver(self, tags_str, data):
        self.received += 1
        STATS.add("delivered")
        try:
            pid, seq_s, _ = data.split(" ", 2)
            seq = int(seq_s)
            pub = REG[pid]
            idx = pub.log[seq]
        except (ValueError, KeyError, IndexError):
            self.bad_thing("corrupt", f"a delivery no publisher sent: {tags_str!r} {data[:120]!r}")
            return
        if CAT.strs[idx] != tags_str:
            self.bad_thing("corrupt", f"{pid}#{seq} has tags {tags_str!r}, sent {CAT.strs[idx]!r}")
        if data != data_for(pid, seq):
            self.bad_thing("corrupt", f"{pid}#{seq}: data differs from what was sent: {data[:120]!r}")
        last = self.last.get(pid, -1)
        if seq <= last:
            kind = "duplicate" if self.bits[pid][seq] else "order"
            self.bad_thing(kind, f"{pid}#{seq} arrived after {pid}#{last}")
        else:
            self.last[pid] = seq
        bits = self.bits.get(pid)
        if bits is None:
            bits = self.bits[pid] = bytearray()
        if seq >= len(bits):
            bits.extend(bytes(seq - len(bits) + 4096))
        bits[seq] = 1
        if not any(r.matches(idx) for r in self.recs if r.live):
            self.bad_thing("unexpected", f"{pid}#{seq} [{tags_str}] matches no subscription held "
                           f"(held: {[r.sorted_str() for r in self.live_recs()]})")

    def notice(self, n):
        self.notices.append(n)
        STATS.add("notices")
        STATS.add("notified_drops", n)
        if self.healthy:
            self.bad_thing("slow-consumer", f"a healthy subscriber was told it lost {n} messages")

    def end_all(self):
        """Leaving: nothing more is owed beyond what the publishers have acked by now."""
        snap = snap_acked()
        for r in self.recs:
            if r.end is None:
                r.end = snap

    def check(self):
        """The owed messages that did not arrive."""
        with REG_LOCK:
            pubs = list(REG.items())
        first = []
        for pid, pub in pubs:
            ranges = []
            for r in self.recs:
                if r.start is None or r.end is None:
                    continue
                lo, hi = r.start.get(pid, -1) + 1, r.end.get(pid, -1)
                if lo <= hi:
                    ranges.append((r, lo, hi))
            if not ranges:
                continue
            bits = self.bits.get(pid, b"")
            log_ = pub.log
            nbits = len(bits)
            for s in range(min(x[1] for x in ranges), max(x[2] for x in ranges) + 1):
                idx = log_[s]
                for r, lo, hi in ranges:
                    if lo <= s <= hi and r.matches(idx):
                        break
                else:
                    continue
                self.owed += 1
                if s >= nbits or not bits[s]:
                    self.missing += 1
                    if len(first) < 3:
                        first.append(f"{pid}#{s} [{CAT.strs[idx]}]")
        if self.after_revoke is not None:
            for pid, bits in self.bits.items():
                lim = self.after_revoke.get(pid, -1)
                late = [s for s in range(lim + 1, len(bits)) if bits[s]]
                if late:
                    self.bad_thing("revocation", f"{len(late)} deliveries from {pid} published after "
                                   f"its token was unregistered, e.g. #{late[0]}")
        STATS.add("healthy_owed" if self.healthy else "stalled_owed", self.owed)
        if self.healthy:
            STATS.add("healthy_sessions")
            STATS.add("healthy_missing", self.missing)
            if self.missing:
                self.bad_thing("loss", f"missed {self.missing} of {self.owed} owed messages, e.g. "
                               f"{', '.join(first)}; subscriptions "
                               f"{[r.sorted_str() for r in self.recs]}")
        else:
            STATS.add("stalled_sessions")
            STATS.add("stalled_missing", self.missing)
            told = sum(self.notices)
            if self.missing > told:
                self.bad_thing("unnotified-loss", f"lost {self.missing} owed messages but was told "
                               f"of {told} (notices {self.notices[:10]})")
        # Checked: let go of the bitmaps (sessions are kept for the summary).
        self.bits = {}
        for r in self.recs:
            r.cache = {}


def gen_sub_tags(rng, token_tags=None):
    """A subscription: from everything (`soak`) to never-matching unique tags."""
    if token_tags is not None:
        first = rng.choice(sorted(token_tags))
        if rng.random() < 0.4:
            return {first, rng.choice(COLORS + SHAPES + PUB_TAGS)}
        return {first}
    r = rng.random()
    if r < 0.04:
        return {"soak"}
    if r < 0.12:
        u = f"u{rng.randrange(1 << 40):x}"       # a tag nobody publishes: interning churn
        return {u} if rng.random() < 0.5 else {u, rng.choice(COLORS)}
    if r < 0.27:
        t = {rng.choice(PUB_TAGS)}
        if rng.random() < 0.5:
            t.add(rng.choice(COLORS))
        return t
    if r < 0.40:
        t = {f"n{rng.randrange(NOISE)}"}
        if rng.random() < 0.3:
            t.add(rng.choice(SHAPES))
        return t
    return set(rng.sample(COLORS + SHAPES, rng.choice((1, 1, 2, 2, 3))))


def list_reply_tcp(recs):
    items = sorted(r.sorted_str() for r in recs)
    return "list [" + " ".join(f"[{i}]" for i in items) + "]"


# ---------------------------------------------------------------------------------------------
# TCP subscribers
# ---------------------------------------------------------------------------------------------

def last_barrier(sub, no_reply, closed):
    """A subscriber's (TcpSub or WsSub) last barrier: every owed message is read before the
    reply to its last ping. `closed()` words the violation when the server closes first."""
    sub.sess.end_all()
    sub.done = False
    sub.ping()
    sub.ping(("done", None))
    deadline = time.monotonic() + REPLY_TIMEOUT
    sub.resumed_at = time.monotonic()
    while not sub.done:
        if time.monotonic() > deadline:
            sub.sess.bad_thing("no-reply", no_reply)
            break
        if not sub.pump(0.2):
            sub.sess.bad_thing("closed", closed())
            break
    if sub.mode == "stalled":
        # A notice may follow the pong: the queue had room again only after writing it.
        end = time.monotonic() + 0.5
        while time.monotonic() < end and sub.pump(0.1):
            pass
    for r in sub.sess.recs:
        r.live = False


class TcpSub:
    """A TCP subscriber session; `mode` is healthy, stalled (reads, stops, reads, ...), or
    zombie (never reads after subscribing; the server must give it up after write_timeout)."""

    def __init__(self, name, port, rng, mode="healthy", life=None):
        self.rng = rng
        self.mode = mode
        self.sess = Session(name, "tcp", healthy=(mode == "healthy"))
        small = mode in ("stalled", "zombie")
        self.sock = tcp_connect(port, rcvbuf=4096 if small else None)
        self.lines = Lines(self.sock)
        self.pending = collections.deque()   # (kind, sent_at, arg)
        self.life_end = time.monotonic() + life if life is not None else None
        self.next_action = time.monotonic()
        self.resumed_at = time.monotonic()
        self.closed = False

    def send(self, text):
        self.sock.sendall(text.encode())

    def subscribe(self, tags):
        r = Rec(tags)
        self.sess.recs.append(r)
        self.send(f"subscribe {tagstr(tags, self.rng)}\nping\n")
        self.pending.append(("pong", time.monotonic(), ("start", r)))

    def unsubscribe(self, r):
        r.end = snap_acked()
        self.send(f"unsubscribe {tagstr(r.tags, self.rng)}\nping\n")
        self.pending.append(("pong", time.monotonic(), ("gone", r)))

    def ask_list(self):
        self.send("list\n")
        self.pending.append(("list", time.monotonic(), list_reply_tcp(self.sess.active())))

    def ping(self, tag=None):
        self.send("ping\n")
        self.pending.append(("pong", time.monotonic(), tag))

    def pump(self, timeout):
        """Reads and handles what arrived; False at the end of the connection."""
        lines = self.lines.read(timeout)
        if lines is None:
            self.closed = True
            return False
        for raw in lines:
            self.handle(raw.decode("utf-8", "replace"))
        if self.pending:
            kind, sent, _ = self.pending[0]
            if time.monotonic() - max(sent, self.resumed_at) > REPLY_TIMEOUT:
                self.sess.bad_thing("no-reply", f"no reply to `{kind}` within {REPLY_TIMEOUT:.0f} s")
                self.pending.popleft()
        return True

    def handle(self, line):
        if line.startswith("publish "):
            try:
                _, tags, data = line.split(" ", 2)
            except ValueError:
                self.sess.bad_thing("corrupt", f"bad delivery line {line[:120]!r}")
                return
            self.sess.deliver(tags, data)
            return
        if line.startswith("error slow consumer: dropped "):
            try:
                n = int(line.split()[4])
            except (IndexError, ValueError):
                self.sess.bad_thing("corrupt", f"bad notice {line!r}")
                return
            self.sess.notice(n)
            return
        if not self.pending:
            self.sess.bad_thing("reply", f"unexpected line {line[:200]!r}")
            return
        kind, _, arg = self.pending.popleft()
        if kind == "pong" and line == "pong":
            if arg is None:
                return
            what, r = arg
            if what == "start":
                r.start = snap_started()
            elif what == "gone":
                r.live = False
            elif what == "done":
                self.done = True
            return
        if kind == "list" and line.startswith("list "):
            if line != arg:
                self.sess.bad_thing("list", f"`list` said {line[:300]!r}, expected {arg[:300]!r}")
            return
        self.sess.bad_thing("reply", f"expected `{kind}`, got {line[:200]!r}")

    def act(self):
        """One random change of subscriptions (or a `list`)."""
        rng = self.rng
        active = self.sess.active()
        r = rng.random()
        if active and (len(active) >= MAX_SUBS or r < 0.3):
            self.unsubscribe(rng.choice(active))
        elif r < 0.4:
            self.ask_list()
        else:
            tags = gen_sub_tags(rng)
            if frozenset(tags) not in {a.tags for a in active}:
                self.subscribe(tags)

    def leave(self):
        last_barrier(self, "no pong to the last ping",
                     lambda: "the server closed the connection before the last pong")
        self.sock.close()
        self.sess.check()

    def run_healthy(self):
        self.subscribe(gen_sub_tags(self.rng))
        while not ABORT.is_set():
            t = time.monotonic()
            if STOP_SUBS.is_set() or (self.life_end is not None and t >= self.life_end):
                break
            if not self.pump(0.05):
                self.sess.bad_thing("closed", "the server closed the connection")
                return
            if t >= self.next_action and not STOP_LOAD.is_set():
                self.act()
                self.next_action = t + self.rng.uniform(*ACTION_GAP)
        if not ABORT.is_set():
            self.leave()

    def run_stalled(self):
        """Subscribes to everything; reads for a while, stops reading for STALL_SECONDS, ..."""
        self.subscribe({"soak"})
        reading_until = time.monotonic() + 3.0
        while not ABORT.is_set() and not STOP_SUBS.is_set():
            if time.monotonic() < reading_until:
                if not self.pump(0.05):
                    self.sess.bad_thing("closed", "the server closed the stalled subscriber")
                    return
                continue
            if self.pending:      # stall only with no reply outstanding
                self.pump(0.05)
                continue
            STATS.add("stalls")
            stall_end = time.monotonic() + STALL_SECONDS
            while time.monotonic() < stall_end and not ABORT.is_set() and not STOP_SUBS.is_set():
                time.sleep(0.1)
            self.resumed_at = time.monotonic()
            reading_until = time.monotonic() + self.rng.uniform(4.0, 8.0)
        if not ABORT.is_set():
            self.leave()

    def run_zombie(self):
        """Subscribes to everything and never reads again; once write_timeout has passed the
        server must have closed the connection."""
        self.subscribe({"soak"})
        deadline = time.monotonic() + REPLY_TIMEOUT
        while self.pending and time.monotonic() < deadline:
            self.pump(0.1)
        for r in self.sess.recs:
            r.live = False        # from here on, nothing is checked: it is not reading
        give_up = time.monotonic() + WRITE_TIMEOUT + 10
        while time.monotonic() < give_up and not ABORT.is_set() and not STOP_SUBS.is_set():
            time.sleep(0.2)
        if ABORT.is_set() or STOP_SUBS.is_set():
            self.sock.close()
            return
        # Drain: a connection the server gave up ends (EOF or reset) once its buffers are read.
        end = time.monotonic() + 10
        ended = False
        self.sock.settimeout(1)
        while time.monotonic() < end:
            try:
                if not self.sock.recv(1 << 18):
                    ended = True
                    break
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                ended = True
                break
        self.sock.close()
        if ended:
            STATS.add("zombies_dropped")
        else:
            violation("write-timeout", f"{self.sess.name}: a subscriber that stopped reading was "
                      f"still connected {WRITE_TIMEOUT + 10} s later (write_timeout {WRITE_TIMEOUT})")


# ---------------------------------------------------------------------------------------------
# WebSocket subscribers
# ---------------------------------------------------------------------------------------------

class Revocation:
    def __init__(self, kind, unset=None):
        self.kind = kind          # "unset" or "unregister"
        self.unset = unset or set()
        self.ready = threading.Event()
        self.done = threading.Event()
        self.cancelled = False
        self.after = None         # publishers' `started` once the admin command was answered
        self.expected = []        # the Recs to be revoked
        self.state = "asked"
        self.since = time.monotonic()


class WsSub:
    def __init__(self, name, http_port, admin, rng, mode="healthy", life=None, revocable=False):
        self.rng = rng
        self.mode = mode
        self.admin = admin
        self.http_port = http_port
        self.revocable = revocable
        self.sess = Session(name, "ws", healthy=(mode == "healthy"))
        self.token = f"soak-{name}-{rng.randrange(1 << 48):x}"
        self.token_tags = set(rng.sample(COLORS + SHAPES + PUB_TAGS, 3))
        if mode == "stalled":
            self.token_tags = {"soak"}
        admin.cmd(f"register {','.join(sorted(self.token_tags))} {self.token}")
        self.token_live = True
        sock = None
        if mode == "stalled":
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(10)
            sock.connect((HOST, http_port))
        self.ws = ws_connect(http_port, self.token, sock=sock,
                             max_queue=4 if mode == "stalled" else 4096)
        self.pending = collections.deque()
        self.life_end = time.monotonic() + life if life is not None else None
        self.next_action = time.monotonic()
        self.resumed_at = time.monotonic()
        self.rev = None           # a Revocation asked for by the admin thread
        self.closed_code = None
        self.done = False

    def send(self, obj):
        self.ws.send(json.dumps(obj))

    def subscribe(self, tags, allowed=True):
        r = Rec(tags) if allowed else None
        if r is not None:
            self.sess.recs.append(r)
        t = list(tags)
        self.rng.shuffle(t)
        self.send({"command": "subscribe", "tags": t})
        self.pending.append(("subscribe", time.monotonic(), allowed))
        if r is not None:
            self.ping(("start", r))

    def unsubscribe(self, r):
        r.end = snap_acked()
        self.send({"command": "unsubscribe", "tags": sorted(r.tags)})
        self.pending.append(("unsubscribe", time.monotonic(), True))
        self.ping(("gone", r))

    def ask_list(self):
        self.send({"command": "list"})
        want = sorted((sorted(r.tags) for r in self.sess.active()), key=lambda t: ",".join(t))
        self.pending.append(("list", time.monotonic(), want))

    def ping(self, tag=None):
        self.send({"command": "ping"})
        self.pending.append(("ping", time.monotonic(), tag))

    def pump(self, timeout):
        try:
            msg = self.ws.recv(timeout=timeout)
        except TimeoutError:
            msg = None
        except websockets.exceptions.ConnectionClosed as e:
            self.closed_code = e.rcvd.code if e.rcvd is not None else None
            return False
        if msg is not None:
            self.handle(msg)
        if self.pending:
            kind, sent, _ = self.pending[0]
            if time.monotonic() - max(sent, self.resumed_at) > REPLY_TIMEOUT:
                self.sess.bad_thing("no-reply", f"no reply to `{kind}` within {REPLY_TIMEOUT:.0f} s")
                self.pending.popleft()
        return True

    def handle(self, msg):
        if isinstance(msg, bytes):
            self.sess.bad_thing("reply", "a binary frame")
            return
        try:
            obj = json.loads(msg)
        except ValueError:
            self.sess.bad_thing("corrupt", f"not JSON: {msg[:120]!r}")
            return
        if "keys" in obj:
            keys = obj["keys"]
            if keys != sorted(keys):
                self.sess.bad_thing("corrupt", f"keys not sorted: {keys}")
            self.sess.deliver(",".join(keys), obj.get("data", ""))
            return
        if obj.get("reason") == "access revoked":
            tags = frozenset(obj.get("tags") or [])
            hit = [r for r in self.sess.recs if r.live and r.revoked and r.tags == tags]
            if not hit:
                self.sess.bad_thing("revocation", f"unexpected revocation notice {msg[:200]}")
                return
            hit[0].live = False
            STATS.add("revoked_subscriptions")
            return
        if obj.get("success") is False and "dropped" in obj:
            self.sess.notice(int(obj["dropped"]))
            return
        if not self.pending:
            self.sess.bad_thing("reply", f"unexpected frame {msg[:200]}")
            return
        kind, _, arg = self.pending.popleft()
        if obj.get("command") != kind:
            self.sess.bad_thing("reply", f"expected a reply to `{kind}`, got {msg[:200]}")
            return
        if kind == "ping":
            if arg is None:
                return
            what, r = arg
            if what == "start":
                r.start = snap_started()
            elif what == "gone":
                r.live = False
            elif what == "done":
                self.done = True
            elif what == "ready":
                r.ready.set()
            elif what == "revoked":
                self.after_revocation(r)
            return
        if kind in ("subscribe", "unsubscribe"):
            if obj.get("success") is not arg:
                self.sess.bad_thing("reply", f"`{kind}` should {'' if arg else 'not '}succeed: {msg[:200]}")
            return
        if kind == "list":
            if obj.get("subscriptions") != arg:
                self.sess.bad_thing("list", f"`list` said {obj.get('subscriptions')}, expected {arg}")
            return

    def act(self):
        rng = self.rng
        active = self.sess.active()
        r = rng.random()
        if active and (len(active) >= MAX_SUBS or r < 0.3):
            self.unsubscribe(rng.choice(active))
        elif r < 0.4:
            self.ask_list()
        elif r < 0.45:
            # Refused: none of its tags is the token's.
            lacking = sorted(set(COLORS + SHAPES + PUB_TAGS) - self.token_tags)
            self.subscribe({rng.choice(lacking)}, allowed=False)
        else:
            tags = gen_sub_tags(rng, self.token_tags)
            if frozenset(tags) not in {a.tags for a in active}:
                self.subscribe(tags)

    # Revocation, driven by the admin thread through self.rev.

    def start_revocation(self):
        """Marks what the admin is about to revoke and stops owing it anything past the
        publishers' acks now; the admin goes ahead once the ping after this is answered (all of
        those messages read)."""
        rev = self.rev
        snap = snap_acked()
        if rev.kind == "unregister":
            rev.expected = [r for r in self.sess.recs if r.end is None]
        else:
            left = self.token_tags - rev.unset
            rev.expected = [r for r in self.sess.recs if r.end is None and r.live
                            and not (r.tags & left)]
        for r in rev.expected:
            r.end = snap
            r.revoked = True
        self.ping(("ready", rev))

    def after_revocation(self, rev):
        """The ping sent after the admin's command was answered: every notice came before."""
        rev.state = "done"
        for r in rev.expected:
            if r.live:
                self.sess.bad_thing("revocation", f"no revocation notice for [{r.sorted_str()}]")
                r.live = False
        self.token_tags -= rev.unset
        self.rev = None

    def leave(self):
        last_barrier(self, "no reply to the last ping",
                     lambda: f"closed (code {self.closed_code}) before the last ping reply")
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001
            pass
        self.sess.check()

    def unregister_token(self):
        if self.token_live:
            self.admin.cmd(f"unregister {self.token}")
            self.token_live = False

    def run(self):
        try:
            if self.mode == "stalled":
                self.run_stalled()
            else:
                self.run_healthy()
        finally:
            try:
                self.ws.close()
            except Exception:  # noqa: BLE001
                pass
            if not ABORT.is_set():
                self.unregister_token()

    def run_healthy(self):
        self.subscribe(gen_sub_tags(self.rng, self.token_tags))
        while not ABORT.is_set():
            t = time.monotonic()
            rev = self.rev
            if rev is not None:
                self.revocation_step(rev, t)
            elif STOP_SUBS.is_set() or (self.life_end is not None and t >= self.life_end):
                break
            if not self.pump(0.05):
                if rev is not None and rev.kind == "unregister" and rev.state == "preparing":
                    self.unregistered(rev)
                    return
                self.sess.bad_thing("closed", f"the server closed the WebSocket (code {self.closed_code})")
                return
            if self.rev is None and t >= self.next_action and not STOP_LOAD.is_set():
                self.act()
                self.next_action = t + self.rng.uniform(*ACTION_GAP)
        if not ABORT.is_set():
            self.leave()

    def revocation_step(self, rev, t):
        """asked -> preparing (ping; the admin acts once it is answered) -> for unset:
        confirming (a ping after the admin's reply; every notice comes before its answer) ->
        done. For unregister, the connection must close (code 1008)."""
        if rev.state == "asked":
            rev.state = "preparing"
            rev.since = t
            self.start_revocation()
        elif rev.state == "preparing" and rev.done.is_set() and rev.kind == "unset":
            rev.state = "confirming"
            self.ping(("revoked", rev))
        elif t - rev.since > 3 * REPLY_TIMEOUT:
            self.sess.bad_thing("revocation", f"{rev.kind} revocation still unfinished after "
                                f"{3 * REPLY_TIMEOUT:.0f} s (state {rev.state}, admin done "
                                f"{rev.done.is_set()})")
            self.rev = None
            rev.cancelled = True
            rev.ready.set()

    def unregistered(self, rev):
        """Closed after the admin unregistered the token: code 1008, nothing delivered that was
        published after the admin's reply, and the token no longer opens a WebSocket."""
        if not rev.done.wait(REPLY_TIMEOUT):
            self.sess.bad_thing("revocation", "closed but the admin's unregister was never answered")
            return
        self.token_live = False
        STATS.add("revoked_connections")
        if self.closed_code != 1008:
            self.sess.bad_thing("revocation", f"closed with code {self.closed_code}, not 1008, after unregister")
        for r in self.sess.recs:
            r.live = False
        self.sess.after_revoke = rev.after
        self.sess.check()
        try:
            ws = ws_connect(self.http_port, self.token)
            ws.close()
            self.sess.bad_thing("revocation", "an unregistered token still opens a WebSocket")
        except websockets.exceptions.InvalidStatus as e:
            if e.response.status_code != 401:
                self.sess.bad_thing("revocation", f"an unregistered token got HTTP {e.response.status_code}, not 401")

    def run_stalled(self):
        self.subscribe({"soak"})
        reading_until = time.monotonic() + 3.0
        while not ABORT.is_set() and not STOP_SUBS.is_set():
            if time.monotonic() < reading_until or self.pending:
                if not self.pump(0.05):
                    self.sess.bad_thing("closed", f"the stalled WebSocket was closed (code {self.closed_code})")
                    return
                continue
            STATS.add("stalls")
            stall_end = time.monotonic() + STALL_SECONDS
            while time.monotonic() < stall_end and not ABORT.is_set() and not STOP_SUBS.is_set():
                time.sleep(0.1)
            self.resumed_at = time.monotonic()
            reading_until = time.monotonic() + self.rng.uniform(4.0, 8.0)
        if not ABORT.is_set():
            self.leave()


# websockets >= 16 wants `legacy=True` to return the connection directly without a warning.
WS_LEGACY = ({"legacy": True} if "legacy" in
             __import__("inspect").signature(websockets.sync.client.connect).parameters else {})


def ws_connect(http_port, token, sock=None, max_queue=4096):
    STATS.add("ws_connections")
    return websockets.sync.client.connect(
        f"ws://{HOST}:{http_port}/subscribe/websocket?x-auth-token={token}",
        sock=sock, proxy=None, compression=None, ping_interval=None, open_timeout=10,
        close_timeout=5, max_size=None, max_queue=max_queue, **WS_LEGACY)


# ---------------------------------------------------------------------------------------------
# Slots: threads that keep a kind of client going, one session after another
# ---------------------------------------------------------------------------------------------

LIVE_WS = []          # WsSub sessions the admin may revoke
LIVE_WS_LOCK = threading.Lock()


def guarded(name, fn):
    def run():
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            if not ABORT.is_set():
                violation("client", f"{name}: {e!r}\n{traceback.format_exc()}")
    t = threading.Thread(target=run, name=name, daemon=True)
    return t


def tcp_slot(i, port, churn):
    rng = random.Random(SEED * 7 + i)
    n = 0
    while not STOP_LOAD.is_set() and not ABORT.is_set():
        n += 1
        life = rng.uniform(*SESSION_LIFE) if churn else None
        name = f"tcp-{'churn' if churn else 'long'}-{i}.{n}"
        s = TcpSub(name, port, rng, life=life)
        s.run_healthy()
        if not churn:
            return
        time.sleep(rng.uniform(0, 1.0))


def ws_slot(i, http_port, admin, churn):
    rng = random.Random(SEED * 11 + i)
    n = 0
    while not STOP_LOAD.is_set() and not ABORT.is_set():
        n += 1
        life = rng.uniform(*SESSION_LIFE) if churn else None
        s = WsSub(f"ws-{'churn' if churn else 'long'}-{i}.{n}", http_port, admin, rng,
                  life=life, revocable=churn)
        if churn:
            with LIVE_WS_LOCK:
                LIVE_WS.append(s)
        try:
            s.run()
        finally:
            with LIVE_WS_LOCK:
                if s in LIVE_WS:
                    LIVE_WS.remove(s)
            rev = s.rev
            if rev is not None:
                rev.cancelled = True
                rev.ready.set()
        if not churn:
            return
        time.sleep(rng.uniform(0, 1.0))


def stalled_tcp(port):
    rng = random.Random(SEED * 13)
    TcpSub("tcp-stalled", port, rng, mode="stalled").run_stalled()


def stalled_ws(http_port, admin):
    rng = random.Random(SEED * 17)
    s = WsSub("ws-stalled", http_port, admin, rng, mode="stalled")
    s.run()


def zombies(port):
    rng = random.Random(SEED * 19)
    n = 0
    while not STOP_LOAD.is_set() and not ABORT.is_set():
        n += 1
        STATS.add("zombies")
        TcpSub(f"tcp-zombie-{n}", port, rng, mode="zombie").run_zombie()
        STOP_LOAD.wait(rng.uniform(2, 8))


def admin_loop(admin, rng):
    """Token churn (register/set/unset/tags/unregister of tokens nobody uses, and the errors
    some of them must give), and every few seconds a revocation of a WebSocket client's token:
    some tags unset, or the token unregistered."""
    others = {}       # token -> tags
    k = 0
    next_revoke = time.monotonic() + rng.uniform(3, 8)
    universe = COLORS + SHAPES + PUB_TAGS
    while not STOP_LOAD.is_set() and not ABORT.is_set():
        STOP_LOAD.wait(rng.uniform(0.2, 1.0))
        if STOP_LOAD.is_set():
            break
        r = rng.random()
        if r < 0.3 or not others:
            k += 1
            tok = f"other-{k}-{rng.randrange(1 << 32):x}"
            tags = set(rng.sample(universe, rng.randint(1, 4)))
            admin.cmd(f"register {tagstr(tags, rng)} {tok}")
            others[tok] = tags
        elif r < 0.45:
            tok = rng.choice(sorted(others))
            add = set(rng.sample(universe, 2))
            admin.cmd(f"set {tagstr(add, rng)} {tok}")
            others[tok] |= add
        elif r < 0.6 and any(others.values()):
            tok = rng.choice(sorted(t for t, v in others.items() if v))
            rem = set(rng.sample(sorted(others[tok]), 1))
            admin.cmd(f"unset {tagstr(rem, rng)} {tok}")
            others[tok] -= rem
        elif r < 0.75:
            tok = rng.choice(sorted(others))
            got = admin.cmd(f"tags {tok}")
            want = f"tags {tok} {','.join(sorted(others[tok]))}".rstrip()
            if [g.rstrip() for g in got] != [want]:
                violation("admin", f"`tags {tok}` said {got}, expected [{want!r}]")
        elif r < 0.8:
            tok = rng.choice(sorted(others))
            admin.cmd(f"register a {tok}", expect_error=True)        # already exists
            admin.cmd(f"set a never-registered-{k}", expect_error=True)
        elif len(others) > 10 or r < 0.9:
            tok = rng.choice(sorted(others))
            admin.cmd(f"unregister {tok}")
            del others[tok]
        if time.monotonic() >= next_revoke:
            revoke_one(admin, rng)
            next_revoke = time.monotonic() + rng.uniform(4, 10)
    for tok in sorted(others):
        admin.cmd(f"unregister {tok}")


def revoke_one(admin, rng):
    with LIVE_WS_LOCK:
        cands = [s for s in LIVE_WS if s.rev is None and s.revocable and
                 s.life_end is not None and s.life_end - time.monotonic() > 3]
    if not cands:
        return
    victim = rng.choice(cands)
    if rng.random() < 0.5 or len(victim.token_tags) < 2:
        rev = Revocation("unregister")
    else:
        held = sorted(victim.token_tags)
        rev = Revocation("unset", set(rng.sample(held, rng.randint(1, len(held) - 1))))
    victim.rev = rev
    if not rev.ready.wait(REPLY_TIMEOUT) or rev.cancelled:
        if not rev.cancelled:
            violation("revocation", f"{victim.sess.name} never got ready for its revocation")
        return
    if rev.kind == "unregister":
        admin.cmd(f"unregister {victim.token}")
        victim.token_live = False
    else:
        admin.cmd(f"unset {tagstr(rev.unset, rng)} {victim.token}")
    rev.after = snap_started()
    STATS.add(f"revocations_{rev.kind}")
    rev.done.set()


# ---------------------------------------------------------------------------------------------
# The server, watched through /proc
# ---------------------------------------------------------------------------------------------

def free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def listening(pid, port):
    want = f"0100007F:{port:04X}"
    try:
        with open(f"/proc/{pid}/net/tcp") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[1] == want and parts[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "Threads", "VmHWM"):
                out[k] = int(v.split()[0])
    return out


def proc_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_detail(pid):
    names = collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                names[f.read().strip()] += 1
        except OSError:
            pass
    fds = collections.Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        fds[target.split(":")[0] if ":" in target else target] += 1
    return dict(names), dict(fds)


class Server:
    def __init__(self):
        os.makedirs(OUT_DIR, exist_ok=True)
        self.log_path = os.path.join(OUT_DIR, "mist.log")
        self.conf_path = os.path.join(OUT_DIR, "mist.conf")
        for attempt in range(5):
            self.tcp, self.http = free_port(), free_port()
            if self.tcp == self.http:
                continue
            with open(self.conf_path, "w") as f:
                f.write(f"# written by scripts/soak\ntcp_listen_address {HOST}:{self.tcp}\n"
                        f"http_listen_address {HOST}:{self.http}\n{config_text()}")
            self.logf = open(self.log_path, "wb")
            self.proc = subprocess.Popen([MIST, "-d", "--config", self.conf_path],
                                         stdin=subprocess.DEVNULL, stdout=self.logf,
                                         stderr=subprocess.STDOUT, close_fds=True)
            self.pid = self.proc.pid
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                if listening(self.pid, self.tcp) and listening(self.pid, self.http):
                    return
                time.sleep(0.02)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.logf.close()
            text = open(self.log_path, errors="replace").read()
            if "cannot listen" not in text:
                sys.exit(f"scripts/soak: mist did not start:\n{text}")
            log(f"port taken meanwhile, retrying: {text.strip()}")
        sys.exit("scripts/soak: could not start mist on free ports")

    def alive(self):
        return self.proc.poll() is None

    def sample(self):
        st = proc_status(self.pid)
        return st["VmRSS"], st["Threads"], proc_fds(self.pid)

    def settle(self, within):
        """(rss, threads, fds) once three samples 100 ms apart agree."""
        deadline = time.monotonic() + within
        last = []
        while time.monotonic() < deadline:
            s = self.sample()
            last.append(s[1:])
            if len(last) >= 3 and last[-1] == last[-2] == last[-3]:
                return s
            time.sleep(0.1)
        return self.sample()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        self.logf.close()
        return self.proc.returncode

    def log_tail(self, n=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


def rss_breakdown(pid):
    """VmRSS by kind of mapping, from /proc/PID/smaps: {kind: (mappings, KiB)}. glibc's malloc
    arenas other than the main one ([heap]) are anonymous mappings at 64 MiB-aligned addresses;
    a thread stack is an anonymous mapping right above its guard (---p) page."""
    out = collections.defaultdict(lambda: [0, 0])
    prev_end, prev_perm = None, None
    cur = None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            lines = f.readlines()
    except OSError:
        return {}
    for line in lines:
        head = line.split(None, 5)
        if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            perm = head[1]
            name = head[5].strip() if len(head) > 5 else ""
            if perm == "---p":          # guard pages and reserved address space: no RSS
                prev_end, prev_perm, cur = hi, perm, None
                continue
            if name == "[heap]":
                kind = "main arena [heap]"
            elif name.startswith("["):
                kind = "other"
            elif name:
                kind = "binary and libraries"
            elif lo % (64 << 20) == 0:
                kind = "malloc arenas"
            elif prev_end == lo and prev_perm == "---p" and perm == "rw-p":
                kind = "thread stacks"
            else:
                kind = "other anonymous"
            cur = out[kind]
            cur[0] += 1
            prev_end, prev_perm = hi, perm
        elif line.startswith("Rss:") and cur is not None:
            cur[1] += int(line.split()[1])
    return {k: tuple(v) for k, v in out.items()}


def breakdown_text(a, b):
    kinds = sorted(set(a) | set(b), key=lambda k: -b.get(k, (0, 0))[1])
    return "; ".join(f"{k} {a.get(k, (0, 0))[1]}K/{a.get(k, (0, 0))[0]} maps -> "
                     f"{b.get(k, (0, 0))[1]}K/{b.get(k, (0, 0))[0]} maps" for k in kinds)


def config_text():
    """CONFIG with SOAK_EXTRA_CONFIG's settings replacing the same keys (a key may appear only
    once in a mist config)."""
    extra = [l.strip() for l in EXTRA_CONFIG.splitlines() if l.strip()]
    keys = {l.split()[0] for l in extra if not l.startswith("#")}
    base = [l for l in CONFIG.splitlines() if l.strip() and l.split()[0] not in keys]
    return "\n".join(base + extra) + "\n"


def http_get(port, path):
    c = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        c.close()


def parse_metrics(text):
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, v = line.rpartition(" ")
        try:
            out[name] = int(float(v))
        except ValueError:
            pass
    return out


class Monitor(threading.Thread):
    """1 Hz: is the process alive, its RSS/threads/fds, and a `ping` on a connection of its own."""

    def __init__(self, server):
        super().__init__(name="monitor", daemon=True)
        self.server = server
        self.samples = []          # (t, rss_kib, threads, fds)
        self.stop = threading.Event()
        self.ping_stop = threading.Event()
        self.max_rtt = 0.0
        self.sock = tcp_connect(server.tcp)
        self.lines = Lines(self.sock)

    def run(self):
        while not self.stop.is_set():
            t = now()
            if not self.server.alive():
                fatal(f"the server died (exit status {self.server.proc.returncode}); log tail:\n"
                      f"{self.server.log_tail()}")
                return
            try:
                rss, threads, fds = self.server.sample()
                self.samples.append((t, rss, threads, fds))
            except (OSError, KeyError):
                pass
            if self.sock is not None:
                if self.ping_stop.is_set():
                    self.sock.close()
                    self.sock = None
                else:
                    t1 = time.monotonic()
                    try:
                        self.sock.sendall(b"ping\n")
                        got = self.lines.until_pong(PING_TIMEOUT, "monitor")
                        if got:
                            violation("monitor", f"unexpected lines {got[:3]}")
                    except (TimeoutError, ConnectionError, OSError) as e:
                        if self.server.alive():
                            fatal(f"the server stopped answering ping: {e}")
                        self.sock.close()
                        self.sock = None
                    self.max_rtt = max(self.max_rtt, time.monotonic() - t1)
            self.stop.wait(max(0.0, 1.0 - (now() - t)))


class MetricsPoller(threading.Thread):
    def __init__(self, server):
        super().__init__(name="metrics", daemon=True)
        self.server = server
        self.latest = {}
        self.fetches = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(5.0):
            try:
                st, body = http_get(self.server.http, "/metrics")
                if st != 200 or "mist_messages_published_total" not in body:
                    violation("http", f"GET /metrics: {st} {body[:200]!r}")
                else:
                    self.latest = parse_metrics(body)
                    self.fetches += 1
                st, body = http_get(self.server.http, "/ping")
                if (st, body) != (200, "pong"):
                    violation("http", f"GET /ping: {st} {body[:100]!r}")
                STATS.add("http_requests", 2)
            except OSError as e:
                if self.server.alive():
                    violation("http", f"GET /metrics failed: {e!r}")


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def median_between(samples, lo, hi, col):
    vals = [s[col] for s in samples if lo <= s[0] < hi]
    return (statistics.median(vals), len(vals)) if vals else (None, 0)


def machine():
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = f"{int(line.split()[1]) / 1048576:.1f} GiB"
    except OSError:
        pass
    return f"nproc {os.cpu_count()}, memory {mem}, kernel {platform.release()} ({platform.machine()})"


def progress(mon, mp, t):
    s = mon.samples[-1] if mon.samples else (0, 0, 0, 0)
    m = mp.latest
    conns = m.get('mist_connections{transport="tcp"}', 0) + m.get('mist_connections{transport="websocket"}', 0)
    log(f"rss {s[1] / 1024:.1f} MiB  threads {s[2]}  fds {s[3]}  "
        f"published {STATS['published']}  delivered {STATS['delivered']} "
        f"(server: {m.get('mist_deliveries_total', 0)}, dropped {m.get('mist_drops_total', 0)})  "
        f"connections open {conns} (made tcp {STATS['tcp_connections']}, ws {STATS['ws_connections']})  "
        f"violations {len(VIOLATIONS)}")


def main():
    started_at = datetime.datetime.now().astimezone()
    if not os.access(MIST, os.X_OK):
        sys.exit(f"scripts/soak: no mist binary at {MIST}")
    version = subprocess.run([MIST, "-v"], capture_output=True, text=True).stdout.strip()
    server = Server()
    log(f"mist soak: {SOAK_SECONDS:.0f} s, warm-up {WARMUP:.0f} s, seed {SEED}; {version} pid "
        f"{server.pid} on tcp {HOST}:{server.tcp} http {HOST}:{server.http}; log {server.log_path}")
    base_rss, base_threads, base_fds = server.settle(5)
    log(f"baseline before any client: rss {base_rss} KiB, threads {base_threads}, fds {base_fds}")

    def shutdown_now(*_):
        server.stop()
        sys.exit(130)
    signal.signal(signal.SIGINT, shutdown_now)

    admin = Admin(server.tcp)
    mon = Monitor(server)
    mp = MetricsPoller(server)
    mon.start()
    mp.start()

    pubs = [Publisher(i, server.tcp, rate) for i, rate in enumerate(STEADY_RATES)]
    pubs.append(Publisher(len(STEADY_RATES), server.tcp, None))
    pubs.append(Publisher(len(STEADY_RATES) + 1, server.tcp, BULK_RATE, bulk=True))
    subs = []
    for i in range(TCP_LONG):
        subs.append(guarded(f"tcp-long-{i}", lambda i=i: tcp_slot(100 + i, server.tcp, False)))
    for i in range(TCP_CHURN_SLOTS):
        subs.append(guarded(f"tcp-churn-{i}", lambda i=i: tcp_slot(i, server.tcp, True)))
    for i in range(WS_LONG):
        subs.append(guarded(f"ws-long-{i}", lambda i=i: ws_slot(100 + i, server.http, admin, False)))
    for i in range(WS_CHURN_SLOTS):
        subs.append(guarded(f"ws-churn-{i}", lambda i=i: ws_slot(i, server.http, admin, True)))
    subs.append(guarded("tcp-stalled", lambda: stalled_tcp(server.tcp)))
    subs.append(guarded("ws-stalled", lambda: stalled_ws(server.http, admin)))
    subs.append(guarded("zombies", lambda: zombies(server.tcp)))
    admin_t = guarded("admin", lambda: admin_loop(admin, random.Random(SEED * 23)))

    load_start = now()
    for t in subs:
        t.start()
    time.sleep(0.5)
    for p in pubs:
        p.start()
    admin_t.start()

    end_at = load_start + SOAK_SECONDS
    next_progress = load_start + PROGRESS_EVERY
    smaps_warm = None
    while now() < end_at and not ABORT.is_set():
        time.sleep(min(1.0, max(0.0, end_at - now())))
        if now() >= next_progress:
            progress(mon, mp, now())
            next_progress += PROGRESS_EVERY
        if smaps_warm is None and now() >= load_start + WARMUP + WINDOW / 2:
            smaps_warm = rss_breakdown(server.pid)
    load_end = now()
    smaps_end = rss_breakdown(server.pid)

    # Wind down: publishers finish with a barrier, then every subscriber reads up to its last
    # pong and leaves, then the admin, the monitor and everyone else.
    if ABORT.is_set():
        log("aborting: " + "; ".join(f.splitlines()[0] for f in FATAL))
    else:
        log("time is up: stopping publishers, then subscribers")
    STOP_LOAD.set()
    grace = 5 if ABORT.is_set() else 60
    for p in pubs:
        p.join(grace)
    STOP_SUBS.set()
    admin_t.join(grace)
    deadline = time.monotonic() + (5 if ABORT.is_set() else 120)
    for t in subs:
        t.join(max(0.1, deadline - time.monotonic()))
        if t.is_alive() and not ABORT.is_set():
            violation("client", f"{t.name} did not finish within 120 s of the end")
    mp.stop.set()
    mp.join(15)
    mon.ping_stop.set()
    time.sleep(1.5)
    admin.close()

    final_metrics = {}
    exit_status = "n/a"
    end_threads = end_fds = None
    if not ABORT.is_set() and server.alive():
        try:
            st, body = http_get(server.http, "/metrics")
            final_metrics = parse_metrics(body)
        except OSError as e:
            violation("http", f"final GET /metrics failed: {e!r}")
        # Threads and descriptors back to the baseline (threads end asynchronously).
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            _, end_threads, end_fds = server.sample()
            if (end_threads, end_fds) == (base_threads, base_fds) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if (end_threads, end_fds) != (base_threads, base_fds):
            names, fds = proc_detail(server.pid)
            violation("leak", f"{SETTLE_TIMEOUT:.0f} s after the last client left: threads "
                      f"{end_threads} (baseline {base_threads}), fds {end_fds} (baseline {base_fds}); "
                      f"threads {names}; fds {fds}")
    mon.stop.set()
    mon.join(5)
    if not ABORT.is_set():
        code = server.stop()
        exit_status = code
        if code is None:
            violation("server", "did not exit within 15 s of SIGTERM")
        elif code != 0:
            violation("server", f"exited with status {code} on SIGTERM")
    else:
        server.stop()

    # The server's log: no ERROR, no panic.
    log_lines = open(server.log_path, errors="replace").read().splitlines()
    bad_log = [l for l in log_lines if "[ERROR]" in l or "panicked" in l]
    warn_log = [l for l in log_lines if "[WARN]" in l]
    if bad_log:
        violation("log", f"{len(bad_log)} ERROR/panic lines, e.g. {bad_log[:3]}")

    # Memory.
    samples = mon.samples
    with open(os.path.join(OUT_DIR, "samples.csv"), "w") as f:
        f.write("seconds,rss_kib,threads,fds\n")
        for t, rss, th, fd in samples:
            f.write(f"{t - load_start:.1f},{rss},{th},{fd}\n")
    warm_lo, warm_hi = load_start + WARMUP, load_start + WARMUP + WINDOW
    end_lo, end_hi = load_end - WINDOW, load_end + 0.5
    warm_rss, nw = median_between(samples, warm_lo, warm_hi, 1)
    end_rss, ne = median_between(samples, end_lo, end_hi, 1)
    growth = None
    if warm_rss and end_rss and warm_hi <= end_lo + 1e-6:
        growth = end_rss / warm_rss - 1
        if growth > RSS_LIMIT:
            violation("memory", f"RSS grew {growth * 100:.1f}% after warm-up: median {warm_rss:.0f} KiB "
                      f"at {warm_lo - load_start:.0f}-{warm_hi - load_start:.0f} s, {end_rss:.0f} KiB at "
                      f"{end_lo - load_start:.0f}-{load_end - load_start:.0f} s (limit {RSS_LIMIT * 100:.0f}%); "
                      f"by kind of mapping: {breakdown_text(smaps_warm or {}, smaps_end or {})}")
    elif not ABORT.is_set():
        violation("memory", f"too few samples to compare RSS (run of {SOAK_SECONDS:.0f} s too short?)")
    load_samples = [s for s in samples if load_start <= s[0] <= load_end]
    peak_rss = max((s[1] for s in load_samples), default=0)
    peak_threads = max((s[2] for s in load_samples), default=0)
    peak_fds = max((s[3] for s in load_samples), default=0)

    # Cross-checks with the server's own counters.
    published = STATS["published"]
    fm = final_metrics
    if fm:
        if fm.get("mist_messages_published_total") != published:
            violation("metrics", f"mist_messages_published_total {fm.get('mist_messages_published_total')} "
                      f"!= {published} published")
        # Notices queued for a subscriber that never reads again (a zombie) are counted but
        # never read, and the last zombie may be given up after the run: bounds, not equality.
        if fm.get("mist_slow_consumer_notices_total", 0) < STATS["notices"]:
            violation("metrics", f"mist_slow_consumer_notices_total {fm.get('mist_slow_consumer_notices_total')} "
                      f"< {STATS['notices']} notices received")
        wt = fm.get("mist_write_timeouts_total", 0)
        if not STATS["zombies_dropped"] <= wt <= STATS["zombies"]:
            violation("metrics", f"mist_write_timeouts_total {wt}: expected between the "
                      f"{STATS['zombies_dropped']} zombie subscribers seen given up and the "
                      f"{STATS['zombies']} started")
        if fm.get("mist_drops_total", 0) < STATS["notified_drops"]:
            violation("metrics", f"mist_drops_total {fm.get('mist_drops_total')} < "
                      f"{STATS['notified_drops']} drops notified")

    ok = not VIOLATIONS
    with SESS_LOCK:
        sessions = list(ALL_SESSIONS)
    tcp_sessions = sum(1 for s in sessions if s.transport == "tcp")
    ws_sessions = len(sessions) - tcp_sessions

    def kib(v):
        return f"{v:.0f} KiB ({v / 1024:.1f} MiB)" if v else "n/a"

    print()
    print("=" * 78)
    print(f"mist soak: {'PASS' if ok else 'FAIL'}"
          + (f" (aborted: {FATAL[0].splitlines()[0]})" if FATAL else ""))
    print(f"date       {started_at.isoformat(timespec='seconds')}; machine: {machine()}")
    print(f"server     {version}, {MIST}; log {server.log_path}; exit status on SIGTERM: {exit_status}")
    print(f"samples    {os.path.join(OUT_DIR, 'samples.csv')} (1 Hz: RSS, threads, fds)")
    print(f"run        {load_end - load_start:.0f} s of load (SOAK_SECONDS {SOAK_SECONDS:.0f}), warm-up "
          f"{WARMUP:.0f} s, RSS windows {WINDOW:.0f} s, seed {SEED}")
    print(f"RSS        baseline {kib(base_rss)}; after warm-up {kib(warm_rss)} (median of {nw}); "
          f"end {kib(end_rss)} (median of {ne}); peak {kib(peak_rss)}; growth "
          f"{'n/a' if growth is None else f'{growth * 100:+.1f}%'} (limit +{RSS_LIMIT * 100:.0f}%)")
    if smaps_warm and smaps_end:
        print(f"RSS kinds  after warm-up -> end: {breakdown_text(smaps_warm, smaps_end)}")
    print(f"threads    before {base_threads}, peak {peak_threads}, after {end_threads}")
    print(f"fds        before {base_fds}, peak {peak_fds}, after {end_fds}")
    print(f"messages   published {published} (server counted {fm.get('mist_messages_published_total', 'n/a')}); "
          f"delivered to clients {STATS['delivered']} (server queued {fm.get('mist_deliveries_total', 'n/a')}, "
          f"dropped {fm.get('mist_drops_total', 'n/a')}, of which for queue_memory_limit "
          f"{fm.get('mist_drops_memory_limit_total', 'n/a')})")
    print(f"healthy    {STATS['healthy_sessions']} subscriber sessions, {STATS['healthy_owed']} owed "
          f"deliveries checked, {STATS['healthy_missing']} lost")
    print(f"stalled    {STATS['stalled_sessions']} sessions, {STATS['stalls']} stalls; "
          f"{STATS['stalled_missing']} of {STATS['stalled_owed']} owed lost; {STATS['notices']} "
          f"slow-consumer notices for {STATS['notified_drops']} messages; "
          f"{STATS['zombies_dropped']} non-reading subscribers disconnected by write_timeout")
    print(f"clients    {tcp_sessions} TCP and {ws_sessions} WebSocket subscriber sessions; "
          f"{STATS['tcp_connections']} TCP connections, {STATS['ws_connections']} WebSocket upgrades, "
          f"{STATS['http_requests']} HTTP requests ({mp.fetches} /metrics)")
    print(f"admin      {STATS['admin_ops']} commands; revocations: {STATS['revocations_unset']} unset "
          f"({STATS['revoked_subscriptions']} subscriptions removed), {STATS['revocations_unregister']} "
          f"unregister ({STATS['revoked_connections']} WebSockets closed)")
    print(f"ping       monitor's slowest pong {mon.max_rtt * 1000:.1f} ms")
    print(f"log        {len(log_lines)} lines, {len(warn_log)} WARN, {len(bad_log)} ERROR/panic")
    if VIOLATIONS:
        print(f"violations {len(VIOLATIONS)}: " + ", ".join(f"{k} {v}" for k, v in VIOLATION_KINDS.most_common()))
        # The server's death or silence first: what clients saw after it are consequences.
        first = [v for v in VIOLATIONS if v.startswith("server:")]
        for v in (first + [v for v in VIOLATIONS if not v.startswith("server:")])[:25]:
            print(f"  - {v[:1500]}")
        if FATAL:
            print("server log tail:\n" + server.log_tail())
    print("=" * 78)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
