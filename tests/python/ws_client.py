#!/usr/bin/env python3
"""A third-party WebSocket client against mist: Python's `websockets` package (>= 11, for its
sync client).

Run by tests/it/ws_python.rs, which starts a server, registers the token, waits for this script
to print `subscribed`, publishes COUNT messages over TCP with the data `PREFIX0`, `PREFIX1`, ...
and expects this script to exit 0.

The script checks, with exact text where mist promises exact text:
  - a refused token (--refused-token) gets HTTP 401 before the upgrade;
  - ping, subscribe (allowed and refused) and list replies;
  - COUNT deliveries {"keys":[...],"data":"PREFIXi"}, in order, nothing else in between;
  - an RFC 6455 ping is answered with a pong;
  - a final ping reply with nothing before it, and a clean close (code 1000).

Exit status: 0 on success; 1 with a message on stderr on any mismatch, error or timeout;
2 when the `websockets` package is missing.

Example:
  python3 tests/python/ws_client.py --url ws://127.0.0.1:8080/subscribe/websocket \\
      --token TOKEN --subscribe x,py --keys py,x --count 10 --prefix 'msg '
"""

import argparse
import inspect
import json
import signal
import sys

try:
    import websockets
    from websockets.sync.client import connect
except ImportError as e:
    print(
        f"ws_client.py: cannot import the Python package 'websockets' (>= 11): {e}. "
        "Run the README's test script, scripts/test, which installs it "
        "(`pip install websockets`).",
        file=sys.stderr,
    )
    sys.exit(2)


class Mismatch(Exception):
    """What the server sent is not what the protocol promises."""


def compact(value):
    """JSON as mist writes it: no spaces, non-ASCII characters as they are."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def recv_text(ws, timeout):
    try:
        msg = ws.recv(timeout=timeout)
    except TimeoutError:
        raise Mismatch(f"no frame within {timeout} s") from None
    if not isinstance(msg, str):
        raise Mismatch(f"expected a text frame, got binary {msg!r}")
    return msg


def call(ws, command, want, timeout):
    """Sends a command and expects exactly `want` (a str) back."""
    ws.send(compact(command))
    got = recv_text(ws, timeout)
    if got != want:
        raise Mismatch(f"reply to {compact(command)}:\n  got  {got}\n  want {want}")
    # The reply is also valid JSON (exact text above is the stronger check).
    json.loads(got)


def status_of(error):
    """The HTTP status of a refused handshake, across websockets versions."""
    response = getattr(error, "response", None)
    if response is not None:
        return getattr(response, "status_code", None)
    return getattr(error, "status_code", None)


def connect_kwargs(token, timeout):
    kwargs = {
        "additional_headers": {"X-Auth-Token": token},
        "open_timeout": timeout,
        "close_timeout": timeout,
        # Our own pings are checked explicitly below; no keepalive pings in between.
        "ping_interval": None,
        "compression": None,
    }
    # websockets >= 15 would honour proxy environment variables; a test talks to loopback.
    if "proxy" in inspect.signature(connect).parameters:
        kwargs["proxy"] = None
    return kwargs


def expect_refused(url, token, timeout):
    try:
        ws = connect(url, **connect_kwargs(token, timeout))
    except websockets.exceptions.InvalidHandshake as e:
        status = status_of(e)
        if status != 401:
            raise Mismatch(f"token {token!r} refused with {status!r} ({e}), want 401") from None
        return
    ws.close()
    raise Mismatch(f"token {token!r} was accepted, want HTTP 401")


def run(args):
    t = args.timeout
    if args.refused_token:
        expect_refused(args.url, args.refused_token, t)

    keys = args.keys.split(",")
    with connect(args.url, **connect_kwargs(args.token, t)) as ws:
        call(ws, {"command": "ping"}, '{"success":true,"command":"ping"}', t)
        subscriptions = []
        for sub in args.subscribe:
            tags = sub.split(",")
            call(ws, {"command": "subscribe", "tags": tags}, '{"success":true,"command":"subscribe"}', t)
            subscriptions.append(sorted(set(tags)))
        if args.refuse:
            tags = args.refuse.split(",")
            want = compact(
                {
                    "success": False,
                    "command": "subscribe",
                    "error": "token lacks the tags " + ",".join(sorted(set(tags))),
                }
            )
            call(ws, {"command": "subscribe", "tags": tags}, want, t)
        subscriptions.sort(key=lambda s: ",".join(s).encode())
        want = compact({"success": True, "command": "list", "subscriptions": subscriptions})
        call(ws, {"command": "list"}, want, t)
        print("subscribed", flush=True)

        for i in range(args.count):
            got = recv_text(ws, t)
            want_value = {"keys": keys, "data": f"{args.prefix}{i}"}
            try:
                value = json.loads(got)
            except ValueError as e:
                raise Mismatch(f"delivery {i} is not JSON ({e}): {got}") from None
            if value != want_value or list(value) != ["keys", "data"]:
                raise Mismatch(f"delivery {i}:\n  got  {got}\n  want {compact(want_value)}")
            if got != compact(want_value):
                raise Mismatch(f"delivery {i} bytes:\n  got  {got}\n  want {compact(want_value)}")

        # An RFC 6455 ping is answered with a pong.
        pong = ws.ping(b"from-python")
        if not pong.wait(t):
            raise Mismatch(f"no pong within {t} s")

        # Nothing else arrived: the next frame is the reply to this ping.
        call(ws, {"command": "ping"}, '{"success":true,"command":"ping"}', t)
    # Leaving the block closed the connection with code 1000; the server echoes the code.
    code = getattr(ws, "close_code", None)
    if code is None:
        code = ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None
    if code != 1000:
        raise Mismatch(f"the server's close code is {code!r}, want 1000")
    print(f"ok: {args.count} deliveries", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="ws://HOST:PORT/subscribe/websocket")
    p.add_argument("--token", required=True, help="sent as the X-Auth-Token header")
    p.add_argument("--subscribe", action="append", default=[], help="tags a,b to subscribe to (repeatable)")
    p.add_argument("--refuse", help="tags a,b whose subscription the token must be refused")
    p.add_argument("--refused-token", help="a token that must get HTTP 401")
    p.add_argument("--keys", required=True, help="the sorted keys every delivery must carry")
    p.add_argument("--count", type=int, required=True, help="deliveries to receive")
    p.add_argument("--prefix", default="", help="delivery i has the data PREFIXi")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for anything")
    args = p.parse_args()

    # A last resort if a library call ignores its timeout.
    def on_alarm(_signum, _frame):
        print("ws_client.py: overall timeout", file=sys.stderr, flush=True)
        sys.exit(1)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.timeout * 3) + 5)
    try:
        run(args)
    except Mismatch as e:
        print(f"ws_client.py: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # a connection error, a refused upgrade, a closed connection
        print(f"ws_client.py: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
