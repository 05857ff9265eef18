// The mist console's WebSocket, in a worker of its own.
//
// A browser hands a page each WebSocket message as a separate task on the page's main thread,
// which at 10,000 messages/s would leave little time for drawing and for the user. This worker
// owns the socket instead and passes what arrives to the page in batches, in order, about once
// a frame. It understands nothing of mist: the page parses the frames and decides.
//
// From the page: {op: "open", url, gen}, {op: "send", text}, {op: "close"}.
// To the page: {type: "open"}, {type: "frames", frames: [text, ...]}, {type: "close", code,
// reason}, each with the `gen` of the "open" it belongs to, so that the page can tell what
// still comes from a socket it has since replaced.
"use strict";

const FLUSH_MS = 16;

let ws = null;
let gen = 0;
let batch = [];
let timer = 0;

function flush() {
  clearTimeout(timer);
  timer = 0;
  if (batch.length === 0) return;
  postMessage({ type: "frames", frames: batch, gen });
  batch = [];
}

function drop() {
  if (!ws) return;
  const old = ws;
  ws = null;
  old.onopen = old.onmessage = old.onclose = null;
  old.close(1000);
  clearTimeout(timer);
  timer = 0;
  batch = [];
}

function open(url, g) {
  drop();
  gen = g;
  let sock;
  try {
    sock = new WebSocket(url);
  } catch (e) {
    postMessage({ type: "close", code: 0, reason: String(e.message || e), gen });
    return;
  }
  ws = sock;
  sock.onopen = () => {
    if (ws === sock) postMessage({ type: "open", gen });
  };
  sock.onmessage = (ev) => {
    if (ws !== sock) return;
    batch.push(typeof ev.data === "string" ? ev.data : "");
    if (!timer) timer = setTimeout(flush, FLUSH_MS);
  };
  sock.onclose = (ev) => {
    if (ws !== sock) return;
    flush();
    ws = null;
    postMessage({ type: "close", code: ev.code, reason: ev.reason, gen });
  };
}

onmessage = (ev) => {
  const m = ev.data;
  if (m.op === "open") open(m.url, m.gen);
  else if (m.op === "send" && ws && ws.readyState === WebSocket.OPEN) ws.send(m.text);
  else if (m.op === "close") drop();
};
