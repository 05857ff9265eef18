// The mist console: watches tagged messages live through mist's WebSocket API.
//
// Served by mist itself, it talks to nothing but /subscribe/websocket on the origin it came
// from. Message data is only ever put into the page as text (textContent), never as HTML.
//
// Built to stay responsive at 10,000 messages/s: the socket lives in a worker that hands over
// what arrived in batches (socket-worker.js); the page keeps at most MAX_KEPT messages and
// draws new ones at most 20 times a second, in an animation frame, and only the rows in view
// exist in the document (rows have one fixed height, so a row's position is its index times
// that height).
"use strict";

(() => {
  const MAX_KEPT = 1000;
  // Memory bounds for large messages (a JavaScript string takes 2 bytes a character): each
  // message keeps its first MAX_DATA_CHARS characters, all kept ones at most MAX_KEPT_CHARS.
  const MAX_DATA_CHARS = 256 * 1024;
  const MAX_KEPT_CHARS = 16 * 1024 * 1024;
  const MAX_NOTICES = 100;
  const OVERSCAN = 5; // rows drawn beyond each edge of the view
  // New messages are drawn at most this often (20 times a second is plenty to read a stream,
  // and a third of the layout and paint of drawing at 60 Hz); the user's actions at once.
  const STREAM_FRAME_MS = 50;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const TOKEN_KEY = "mist.console.token";
  const SUBS_KEY = "mist.console.subscriptions";
  const CLOSE_POLICY = 1008;

  const $ = (id) => document.getElementById(id);
  const ui = {
    state: $("state"),
    rate: $("rate"),
    tokenForm: $("token-form"),
    token: $("token"),
    disconnect: $("disconnect"),
    forget: $("forget"),
    share: $("share"),
    subForm: $("sub-form"),
    tags: $("tags"),
    subs: $("subs"),
    subsCaption: $("subs-caption"),
    notices: $("notices"),
    pause: $("pause"),
    clear: $("clear"),
    filter: $("filter"),
    shown: $("shown"),
    received: $("received"),
    detail: $("detail"),
    detailTime: $("detail-time"),
    detailTags: $("detail-tags"),
    detailData: $("detail-data"),
    detailClose: $("detail-close"),
    scroll: $("scroll"),
    rows: $("rows"),
    window: $("window"),
    empty: $("empty"),
  };

  // ---------------------------------------------------------------------------------------
  // State
  // ---------------------------------------------------------------------------------------

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  // The subscriptions the user wants, each a sorted array of tags; subscribed again after
  // every reconnect. Mirrors the server's `list` while connected.
  let wanted = loadWanted();
  let serverList = null; // the last `list` reply and when it came; null when not connected

  const socket = new Worker("/socket-worker.js");
  let generation = 0; // of the socket asked for last; what comes from older ones is ignored
  let connecting = false; // a socket was asked for and has not closed
  let opened = false; // ... and it got past the upgrade
  let everOpened = false;
  let userClosed = false;
  let retryTimer = 0;
  let backoff = BACKOFF_MIN_MS;
  let sent = []; // commands sent and not answered yet, oldest first (replies come in order)

  let kept = []; // {t, keys, data, size, lower}, oldest first, at most MAX_KEPT
  let keptChars = 0;
  let incoming = []; // arrived and not merged yet (bounded, also while paused)
  let incomingChars = 0;
  let view = []; // the kept messages that pass the filter, newest first
  let viewStale = true;
  let paused = false;
  let filter = "";
  let selected = null; // the message shown in full
  let rowHeight = 0;
  let frameAsked = false;
  let streamTimer = 0;
  let lastDraw = 0;
  let received = 0;
  let receivedAtTick = 0;
  let tickAt = performance.now();

  // ---------------------------------------------------------------------------------------
  // Small helpers
  // ---------------------------------------------------------------------------------------

  function loadWanted() {
    try {
      const list = JSON.parse(sessionStorage.getItem(SUBS_KEY) || "[]");
      return Array.isArray(list) ? list.filter(isTagList).map(normalise) : [];
    } catch {
      return [];
    }
  }

  function saveWanted() {
    sessionStorage.setItem(SUBS_KEY, JSON.stringify(wanted));
  }

  function isTagList(x) {
    return Array.isArray(x) && x.length > 0 && x.every((t) => typeof t === "string");
  }

  // Tags as mist sees them: order and duplicates do not matter.
  function normalise(tags) {
    return [...new Set(tags)].sort();
  }

  function parseTags(text) {
    return normalise(text.split(",").map((t) => t.trim()).filter((t) => t.length > 0));
  }

  const keyOf = (tags) => tags.join(",");
  const pad = (n, width) => String(n).padStart(width, "0");

  function clock(ms) {
    const d = new Date(ms);
    return `${pad(d.getHours(), 2)}:${pad(d.getMinutes(), 2)}:${pad(d.getSeconds(), 2)}.${pad(d.getMilliseconds(), 3)}`;
  }

  function node(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function chips(tags, into) {
    const span = into || node("span", "chips");
    span.replaceChildren(...tags.map((t) => node("span", "chip", t)));
    return span;
  }

  const number = new Intl.NumberFormat();

  // ---------------------------------------------------------------------------------------
  // State line and notices
  // ---------------------------------------------------------------------------------------

  function setState(kind, text) {
    ui.state.dataset.state = kind;
    ui.state.textContent = text;
    ui.disconnect.disabled = kind === "idle" || kind === "revoked";
    ui.share.disabled = !token;
    ui.forget.disabled = !token;
  }

  // Shows a notice; the same text again right after only bumps a counter, so a server that
  // stays away does not flood the list.
  function notice(kind, text) {
    const first = ui.notices.firstElementChild;
    if (first && first.dataset.text === text) {
      const n = Number(first.dataset.repeat || "1") + 1;
      first.dataset.repeat = String(n);
      first.querySelector(".repeat").textContent = `×${n}`;
      first.querySelector(".time").textContent = clock(Date.now());
      return;
    }
    const li = node("li", `notice ${kind}`);
    li.dataset.kind = kind;
    li.dataset.text = text;
    li.append(node("span", "time", clock(Date.now())), node("span", "kind", kind), node("span", "text", text), node("span", "repeat", ""));
    ui.notices.prepend(li);
    while (ui.notices.childElementCount > MAX_NOTICES) ui.notices.lastElementChild.remove();
  }

  // ---------------------------------------------------------------------------------------
  // The connection
  // ---------------------------------------------------------------------------------------

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = 0;
    userClosed = false;
    if (!token) {
      generation += 1;
      socket.postMessage({ op: "close" });
      connecting = false;
      setState("idle", "not connected: enter a token");
      ui.token.focus();
      return;
    }
    // Browsers cannot set headers on a WebSocket, so the token goes in the query, as the
    // protocol allows; mist never logs it.
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/subscribe/websocket?x-auth-token=${encodeURIComponent(token)}`;
    setState("connecting", `connecting to ${location.host}…`);
    connecting = true;
    opened = false;
    sent = [];
    generation += 1;
    socket.postMessage({ op: "open", url, gen: generation });
  }

  function disconnect() {
    userClosed = true;
    clearTimeout(retryTimer);
    retryTimer = 0;
    generation += 1;
    socket.postMessage({ op: "close" });
    connecting = opened = false;
    serverList = null;
    renderSubs();
    setState("idle", "disconnected");
  }

  function send(cmd) {
    if (!opened) return false;
    socket.postMessage({ op: "send", text: JSON.stringify(cmd) });
    sent.push(cmd);
    return true;
  }

  socket.onmessage = (ev) => {
    const m = ev.data;
    if (m.gen !== generation || !connecting) return; // from a socket given up on
    if (m.type === "frames") {
      for (const text of m.frames) onFrame(text);
    } else if (m.type === "open") {
      onOpen();
    } else if (m.type === "close") {
      onClosed(m.code, m.reason);
    }
  };

  socket.onerror = (ev) => {
    notice("error", `the console's socket worker failed: ${ev.message || "unknown error"}`);
  };

  function onOpen() {
    opened = true;
    backoff = BACKOFF_MIN_MS;
    setState("connected", `connected to ${location.host}`);
    notice("info", everOpened ? "reconnected; subscribing again" : "connected");
    everOpened = true;
    for (const tags of wanted) send({ command: "subscribe", tags });
    send({ command: "list" });
  }

  function onClosed(code, reason) {
    const wasOpen = opened;
    connecting = opened = false;
    serverList = null;
    renderSubs();
    if (userClosed) return;
    if (code === CLOSE_POLICY) {
      const why = reason || "policy violation";
      setState("revoked", `closed by the server: ${why}`);
      notice("revoked", `access revoked: the server closed the connection (${why}, close ${code}); connect again once the token is valid`);
      return;
    }
    const delay = Math.round(backoff * (0.8 + 0.4 * Math.random()));
    backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    const again = `again in ${(delay / 1000).toFixed(1)} s`;
    retryTimer = setTimeout(connect, delay);
    if (wasOpen) {
      const why = reason ? `: ${reason}` : "";
      setState("waiting", `connection lost (close ${code}${why}); trying ${again}`);
      notice("error", `connection lost (close ${code}${why}); reconnecting with backoff`);
      return;
    }
    // The upgrade failed. The browser does not say why; /ping tells a server that is away
    // from one that refused the token (401), the origin (403), the address (429) or a slot
    // (503). Retries stay well below the server's brake on guessing (10 failures in 10 s).
    setState("waiting", `cannot connect; trying ${again}`);
    const stillWaiting = () => !connecting && !userClosed && retryTimer !== 0;
    fetch("/ping", { cache: "no-store" }).then(
      (r) => {
        if (!r.ok) throw new Error(`HTTP ${r.status}`);
        if (!stillWaiting()) return;
        setState("waiting", `refused by the server; trying ${again}`);
        notice("error", "the server refused the WebSocket: an unknown token, a token without tags, an origin not in ws_allowed_origins, this address locked out for failed tokens, or no connection slot left");
      },
      () => {
        if (!stillWaiting()) return;
        setState("waiting", `server unreachable; trying ${again}`);
        notice("error", `the server at ${location.host} does not answer; retrying with backoff`);
      },
    );
  }

  function describe(cmd) {
    if (!cmd) return "the server";
    return cmd.tags ? `${cmd.command} ${keyOf(cmd.tags)}` : cmd.command;
  }

  // One frame from the server: a message, a notice, or the reply to the oldest command.
  function onFrame(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      notice("error", "the server sent a frame that is not JSON");
      return;
    }
    if (msg === null || typeof msg !== "object") return;
    if (Array.isArray(msg.keys)) {
      onMessage(msg);
      return;
    }
    if (typeof msg.dropped === "number") {
      notice("slow", `${msg.error || "slow consumer"}: this page fell behind and the server's queue for it was full`);
      return;
    }
    if (msg.reason !== undefined && isTagList(msg.tags)) {
      const tags = normalise(msg.tags);
      notice("revoked", `${msg.reason}: subscription ${keyOf(tags)} removed by the server (the token lost its tags)`);
      wanted = wanted.filter((w) => keyOf(w) !== keyOf(tags));
      saveWanted();
      send({ command: "list" });
      return;
    }
    const cmd = sent.shift();
    if (msg.success === false) {
      notice("error", `${describe(cmd)}: ${msg.error}`);
      if (cmd && cmd.command === "subscribe") {
        wanted = wanted.filter((w) => keyOf(w) !== keyOf(cmd.tags));
        saveWanted();
        renderSubs();
      }
      return;
    }
    if (msg.command === "list" && Array.isArray(msg.subscriptions)) {
      onList(msg.subscriptions.filter(isTagList).map(normalise));
    }
  }

  // The server's list is the truth; commands still on their way are applied on top of it.
  function onList(subs) {
    serverList = { subs, at: Date.now() };
    const want = new Map(subs.map((s) => [keyOf(s), s]));
    for (const cmd of sent) {
      if (cmd.command === "subscribe") want.set(keyOf(cmd.tags), cmd.tags);
      if (cmd.command === "unsubscribe") want.delete(keyOf(cmd.tags));
    }
    wanted = [...want.values()];
    saveWanted();
    renderSubs();
  }

  // ---------------------------------------------------------------------------------------
  // Subscriptions
  // ---------------------------------------------------------------------------------------

  function subscribe(tags) {
    if (!wanted.some((w) => keyOf(w) === keyOf(tags))) wanted.push(tags);
    saveWanted();
    if (send({ command: "subscribe", tags })) send({ command: "list" });
    renderSubs();
  }

  function unsubscribe(tags) {
    wanted = wanted.filter((w) => keyOf(w) !== keyOf(tags));
    saveWanted();
    if (send({ command: "unsubscribe", tags })) send({ command: "list" });
    renderSubs();
  }

  function renderSubs() {
    const live = serverList !== null;
    const subs = live ? serverList.subs : wanted;
    if (live) {
      ui.subsCaption.textContent = subs.length
        ? `The server's list (${clock(serverList.at)}):`
        : `The server's list is empty (${clock(serverList.at)}).`;
    } else {
      ui.subsCaption.textContent = subs.length ? "Subscribed on connect:" : "None yet.";
    }
    ui.subs.dataset.source = live ? "server" : "local";
    ui.subs.replaceChildren(
      ...subs.map((tags) => {
        const li = node("li", "sub");
        li.dataset.tags = keyOf(tags);
        const remove = node("button", "remove", "Unsubscribe");
        remove.type = "button";
        remove.setAttribute("aria-label", `Unsubscribe from ${keyOf(tags)}`);
        remove.addEventListener("click", () => unsubscribe(tags));
        li.append(chips(tags), remove);
        return li;
      }),
    );
  }

  // ---------------------------------------------------------------------------------------
  // Messages: collected as they come, drawn in animation frames
  // ---------------------------------------------------------------------------------------

  function onMessage(msg) {
    received += 1;
    const all = typeof msg.data === "string" ? msg.data : JSON.stringify(msg.data);
    const data = all.length > MAX_DATA_CHARS ? all.slice(0, MAX_DATA_CHARS) : all;
    incoming.push({ t: Date.now(), keys: msg.keys.map(String), data, size: all.length, lower: null });
    incomingChars += data.length;
    // Paused, or no frames (a hidden tab): keep only what could still be shown.
    if (incoming.length > 2 * MAX_KEPT || incomingChars > MAX_KEPT_CHARS) {
      incomingChars = trimFront(incoming, incomingChars, MAX_KEPT);
    }
    askStreamFrame();
  }

  // Drops the oldest messages of `list` until at most `count` are left holding at most
  // MAX_KEPT_CHARS characters; returns the characters left.
  function trimFront(list, chars, count) {
    let drop = 0;
    while (drop < list.length && (list.length - drop > count || chars > MAX_KEPT_CHARS)) {
      chars -= list[drop].data.length;
      drop += 1;
    }
    list.splice(0, drop);
    return chars;
  }

  // A draw at the next animation frame.
  function askFrame() {
    if (frameAsked) return;
    frameAsked = true;
    requestAnimationFrame(draw);
  }

  // A draw for new messages: at the next frame, but not sooner than STREAM_FRAME_MS after
  // the last one.
  function askStreamFrame() {
    if (frameAsked || streamTimer) return;
    const wait = lastDraw + STREAM_FRAME_MS - performance.now();
    if (wait <= 0) {
      askFrame();
      return;
    }
    streamTimer = setTimeout(() => {
      streamTimer = 0;
      askFrame();
    }, wait);
  }

  function matches(e) {
    if (!filter) return true;
    if (e.lower === null) e.lower = e.data.toLowerCase();
    return e.lower.includes(filter) || e.keys.some((k) => k.toLowerCase().includes(filter));
  }

  function draw() {
    frameAsked = false;
    lastDraw = performance.now();
    if (!paused && incoming.length > 0) merge();
    if (viewStale) {
      viewStale = false;
      view = [];
      for (let i = kept.length - 1; i >= 0; i--) if (matches(kept[i])) view.push(kept[i]);
    }
    renderRows();
    ui.shown.textContent = number.format(view.length);
    ui.shown.dataset.count = String(view.length);
    ui.received.textContent = number.format(received);
    ui.received.dataset.count = String(received);
    ui.empty.hidden = view.length > 0;
  }

  // Moves what arrived into the kept messages. Someone reading further down keeps seeing the
  // same rows: the view is scrolled by the rows added above them.
  function merge() {
    const fresh = incoming;
    incoming = [];
    keptChars += incomingChars;
    incomingChars = 0;
    for (const e of fresh) kept.push(e);
    keptChars = trimFront(kept, keptChars, MAX_KEPT);
    const added = fresh.slice(-kept.length).filter(matches).length;
    viewStale = true;
    if (ui.scroll.scrollTop > 0 && added > 0) {
      ui.rows.style.height = `${Math.min(MAX_KEPT, view.length + added) * rowHeight}px`;
      ui.scroll.scrollTop += added * rowHeight;
    }
  }

  // One message as a row: time, tags as chips, data as text.
  function makeRow(e, index) {
    const row = node("div", "msg row-grid");
    row.setAttribute("role", "row");
    row.dataset.index = String(index);
    if (e === selected) row.classList.add("selected");
    const tags = node("span", "tags");
    tags.title = e.keys.join(",");
    for (const k of e.keys) tags.append(node("span", "chip", k));
    // One line: the rest is cut off by CSS anyway, and shown in full on selection.
    const data = node("span", "data", e.data.length > 1000 ? `${e.data.slice(0, 1000)}…` : e.data);
    if (e.data.length === 0) data.classList.add("blank");
    const cells = [node("span", "time", clock(e.t)), tags, data];
    for (const cell of cells) cell.setAttribute("role", "cell");
    row.append(...cells);
    return row;
  }

  // Puts into the document only the rows in view (and a few around them).
  function renderRows() {
    if (!rowHeight) measure();
    ui.rows.style.height = `${view.length * rowHeight}px`;
    const top = ui.scroll.scrollTop;
    const first = Math.max(0, Math.floor(top / rowHeight) - OVERSCAN);
    const last = Math.min(view.length, Math.ceil((top + ui.scroll.clientHeight) / rowHeight) + OVERSCAN);
    const rows = [];
    for (let i = first; i < last; i++) rows.push(makeRow(view[i], i));
    ui.window.style.transform = `translateY(${first * rowHeight}px)`;
    ui.window.replaceChildren(...rows);
  }

  // The height of a row, which CSS fixes per screen size.
  function measure() {
    const probe = makeRow({ t: 0, keys: ["x"], data: "x" }, 0);
    ui.window.append(probe);
    rowHeight = probe.getBoundingClientRect().height || 32;
    probe.remove();
  }

  function show(e) {
    selected = e;
    ui.detail.hidden = !e;
    if (e) {
      ui.detailTime.textContent = clock(e.t);
      chips(e.keys, ui.detailTags);
      ui.detailData.textContent = e.data;
      if (e.size > e.data.length) {
        ui.detailData.append(node("span", "more", `… and ${number.format(e.size - e.data.length)} more characters, not kept`));
      }
    }
    askFrame();
  }

  // Moves the selection by `step` rows and scrolls it into view.
  function select(step) {
    if (view.length === 0) return;
    const at = view.indexOf(selected);
    const next = at < 0 ? 0 : Math.max(0, Math.min(view.length - 1, at + step));
    show(view[next]);
    const top = next * rowHeight;
    const bottom = top + rowHeight;
    if (top < ui.scroll.scrollTop) ui.scroll.scrollTop = top;
    else if (bottom > ui.scroll.scrollTop + ui.scroll.clientHeight) ui.scroll.scrollTop = bottom - ui.scroll.clientHeight;
  }

  function setPaused(p) {
    paused = p;
    ui.pause.setAttribute("aria-pressed", String(p));
    ui.pause.textContent = p ? "Resume" : "Pause";
    document.body.classList.toggle("paused", p);
    askFrame();
  }

  function setFilter(text) {
    filter = text.trim().toLowerCase();
    viewStale = true;
    ui.scroll.scrollTop = 0;
    askFrame();
  }

  // Once a second: the rate, and a draw in case animation frames are not coming (a hidden tab).
  setInterval(() => {
    const now = performance.now();
    const rate = Math.round(((received - receivedAtTick) * 1000) / Math.max(1, now - tickAt));
    receivedAtTick = received;
    tickAt = now;
    ui.rate.textContent = number.format(rate);
    ui.rate.dataset.rate = String(rate);
    if (frameAsked && document.hidden) draw();
  }, 1000);

  // ---------------------------------------------------------------------------------------
  // The fragment: /#token=TOKEN&tags=a,b&tags=c
  // ---------------------------------------------------------------------------------------

  // Plain percent-decoding: unlike form decoding, a `+` stays a `+` (tokens may contain one).
  function decode(s) {
    try {
      return decodeURIComponent(s);
    } catch {
      return s;
    }
  }

  function readFragment() {
    const hash = location.hash.slice(1);
    if (!hash) return false;
    let linkToken = "";
    const linkTags = [];
    for (const part of hash.split("&")) {
      const eq = part.indexOf("=");
      const key = decode(eq < 0 ? part : part.slice(0, eq));
      const value = eq < 0 ? "" : decode(part.slice(eq + 1));
      if (key === "token") linkToken = value;
      if (key === "tags") {
        const tags = parseTags(value);
        if (tags.length) linkTags.push(tags);
      }
    }
    // Out of the address bar and the history: the token now lives in this tab's storage only.
    history.replaceState(null, "", location.pathname + location.search);
    if (!linkToken && linkTags.length === 0) return false;
    if (linkToken) {
      token = linkToken;
      sessionStorage.setItem(TOKEN_KEY, token);
      ui.token.value = token;
    }
    if (linkTags.length) {
      wanted = [...new Map(linkTags.map((t) => [keyOf(t), t])).values()];
      saveWanted();
    }
    return true;
  }

  function shareLink() {
    const parts = [`token=${encodeURIComponent(token)}`];
    for (const tags of wanted) parts.push(`tags=${tags.map(encodeURIComponent).join(",")}`);
    return `${location.origin}${location.pathname}#${parts.join("&")}`;
  }

  // ---------------------------------------------------------------------------------------
  // Controls
  // ---------------------------------------------------------------------------------------

  ui.tokenForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = ui.token.value.trim();
    if (!value) {
      notice("error", "enter a token first");
      return;
    }
    token = value;
    sessionStorage.setItem(TOKEN_KEY, token);
    backoff = BACKOFF_MIN_MS;
    connect();
  });

  ui.disconnect.addEventListener("click", disconnect);

  ui.forget.addEventListener("click", () => {
    disconnect();
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    ui.token.value = "";
    setState("idle", "not connected: enter a token");
    ui.token.focus();
  });

  ui.share.addEventListener("click", () => {
    if (!navigator.clipboard) {
      notice("error", "the browser offers no clipboard here");
      return;
    }
    navigator.clipboard.writeText(shareLink()).then(
      () => notice("info", "link copied; it contains the token, so share it like one"),
      (e) => notice("error", `cannot copy the link: ${e.message}`),
    );
  });

  ui.subForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const tags = parseTags(ui.tags.value);
    if (tags.length === 0) {
      notice("error", "type one or more tags, comma-separated: a,b");
      return;
    }
    subscribe(tags);
    ui.tags.value = "";
  });

  ui.pause.addEventListener("click", () => setPaused(!paused));

  ui.clear.addEventListener("click", () => {
    kept = [];
    incoming = [];
    keptChars = incomingChars = 0;
    viewStale = true;
    show(null);
  });

  ui.filter.addEventListener("input", () => setFilter(ui.filter.value));
  ui.scroll.addEventListener("scroll", askFrame, { passive: true });
  ui.detailClose.addEventListener("click", () => show(null));

  ui.window.addEventListener("click", (ev) => {
    const row = ev.target instanceof Element ? ev.target.closest(".msg") : null;
    if (row) show(view[Number(row.dataset.index)] || null);
  });

  ui.scroll.addEventListener("keydown", (ev) => {
    const step = { ArrowDown: 1, ArrowUp: -1, PageDown: 10, PageUp: -10 }[ev.key];
    if (step) {
      ev.preventDefault();
      select(step);
    } else if (ev.key === "Escape") {
      show(null);
    }
  });

  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.isComposing) return;
    const t = ev.target;
    if (ev.key === "Escape" && t === ui.filter) {
      ui.filter.value = "";
      setFilter("");
      ui.filter.blur();
      return;
    }
    if (t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement) return;
    const focus = { "/": ui.filter, s: ui.tags, t: ui.token, m: ui.scroll }[ev.key];
    if (focus) {
      ev.preventDefault();
      focus.focus();
    } else if (ev.key === "p") {
      ev.preventDefault();
      setPaused(!paused);
    }
  });

  window.addEventListener("resize", () => {
    rowHeight = 0;
    askFrame();
  });

  window.addEventListener("hashchange", () => {
    if (readFragment()) connect();
    renderSubs();
  });

  // The policy allows nothing but this origin; say so if anything was blocked.
  document.addEventListener("securitypolicyviolation", (ev) => {
    notice("error", `blocked by the page's security policy: ${ev.effectiveDirective} ${ev.blockedURI}`);
  });

  // ---------------------------------------------------------------------------------------
  // Start
  // ---------------------------------------------------------------------------------------

  ui.token.value = token;
  readFragment();
  renderSubs();
  draw();
  if (token) connect();
  else {
    setState("idle", "not connected: enter a token");
    ui.token.focus();
  }
})();
