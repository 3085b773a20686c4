// Shared by the sender and receiver pages: the signaling socket, peer connections, the meter.
// Plain ES module, no build step.

/** What a page without a valid invitation (token) tells its user. */
export const NEEDS_INVITE =
  "This page needs an invitation. Scan the QR code at the entrance again, or ask the organiser for a new link.";

/** What a page whose invitation the operator withdrew (Remove) tells its user. */
export const WITHDRAWN =
  "This invitation was withdrawn by the operator. Ask the organiser if you think this is a mistake.";

/**
 * A WebSocket to /ws that reconnects with backoff and delivers parsed messages, until the
 * operator ends it: then `onState("dismissed" | "removed", their words)` and no reconnect.
 */
export class Signaling {
  constructor({ onMessage, onState, token = null }) {
    this.onMessage = onMessage;
    this.onState = onState;
    this.token = personalToken(token);
    this.farewell = null; // the operator's `disconnected` message: the page stays off
    this.ws = null;
    this.welcome = null;
    this.backoff = 500;
    this.pingTimer = null;
    this.closedByUser = false;
  }

  get url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = this.token ? `?token=${encodeURIComponent(this.token)}` : "";
    return `${scheme}//${location.host}/ws${query}`;
  }

  connect() {
    this.onState("connecting", "Connecting…");
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message.type === "welcome") {
        this.welcome = message;
        this.backoff = 500;
        this.startKeepalive(message.config.ping_interval || 30);
        if (message.personal_token) this.token = keepPersonalToken(this.token, message.personal_token);
      }
      if (this.operatorEnded(message)) return;
      this.onMessage(message);
    };
    ws.onclose = (event) => {
      this.stopKeepalive();
      if (this.ws !== ws || this.closedByUser) return;
      // Technical detail for the console; people get plain words.
      console.info(`relay: WebSocket closed (code ${event.code}${event.reason ? `: ${event.reason}` : ""})`);
      if (this.farewell) return; // the operator ended it: no reconnect
      if (event.code === 1008 && /withdrawn/i.test(event.reason)) {
        this.operatorEnded({ type: "disconnected", reason: "removed", message: WITHDRAWN });
        return;
      }
      if (event.code === 1008 && /token|authenticat/i.test(event.reason)) {
        // No (valid) invitation: trying again would fail the same way, so do not loop.
        this.onState("unauthorized", NEEDS_INVITE);
        return;
      }
      const delay = this.backoff;
      this.backoff = Math.min(this.backoff * 2, 8000);
      this.onState("disconnected", "Reconnecting…");
      setTimeout(() => this.connect(), delay);
    };
  }

  /**
   * The operator's Disconnect or Remove (`disconnected`), or a door refusing a withdrawn
   * invitation: said once, in their words, and the reconnect loop stops. True if it was.
   */
  operatorEnded(message) {
    const withdrawn = message.type === "error" && /withdrawn by the operator/i.test(message.message);
    if (message.type !== "disconnected" && !withdrawn) return false;
    if (this.farewell) return true;
    this.farewell = withdrawn ? { type: "disconnected", reason: "removed", message: WITHDRAWN } : message;
    this.stopKeepalive();
    this.onState(this.farewell.reason === "removed" ? "removed" : "dismissed", this.farewell.message);
    if (this.farewell.reason !== "removed") offerReload();
    return true;
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  // The keepalive: a ping every `ping_interval` s from `welcome` (15 s by default).
  startKeepalive(seconds) {
    this.stopKeepalive();
    this.pingTimer = setInterval(() => this.send({ type: "ping" }), Math.min(seconds, 30) * 1000);
  }

  stopKeepalive() {
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = null;
  }

  close() {
    this.closedByUser = true;
    this.stopKeepalive();
    if (this.ws) this.ws.close(1000, "page closed");
  }
}

/** After the operator's Disconnect: a button that reloads the page (an installed app has no
 * reload button of its own), right under the status line. */
function offerReload() {
  const status = document.getElementById("status");
  if (!status || document.getElementById("reload")) return;
  const reload = document.createElement("button");
  reload.type = "button";
  reload.id = "reload";
  reload.className = "primary";
  reload.textContent = "Reload this page";
  reload.addEventListener("click", () => location.reload());
  status.after(reload);
}

// A page that came with an invite (a link or code many people share) gets a token of its own
// from the server (`welcome.personal_token`) and uses it from then on, on this device, for that
// invite: the operator's Remove then withdraws this device, and a reload does not undo it.
const PASS_PREFIX = "relay_app.pass.";

function storage() {
  try {
    return window.localStorage;
  } catch {
    return null; // (storage blocked: the invite itself is used)
  }
}

/** The token to use for `token`: this device's own pass for that invite, if it has one. */
export function personalToken(token) {
  const claims = tokenClaims(token);
  const store = storage();
  if (!claims || !claims.inv || !claims.jti || !store) return token;
  for (const key of Object.keys(store).filter((k) => k.startsWith(PASS_PREFIX))) {
    const exp = (tokenClaims(store.getItem(key)) || {}).exp;
    if (!exp || exp * 1000 <= Date.now()) store.removeItem(key); // (expired passes go)
  }
  return store.getItem(PASS_PREFIX + claims.jti) || token;
}

function keepPersonalToken(token, personal) {
  const claims = tokenClaims(token);
  const store = storage();
  if (claims && claims.jti && store) {
    try {
      store.setItem(PASS_PREFIX + claims.jti, personal);
    } catch {
      // (full or blocked: this visit uses it all the same)
    }
  }
  return personal;
}

/** A peer connection for the LAN: no STUN/TURN unless the server says otherwise. */
export function newPeerConnection(welcome) {
  const iceServers = (welcome && welcome.config && welcome.config.ice_servers) || [];
  return new RTCPeerConnection({ iceServers });
}

/**
 * Wait until ICE gathering is complete: the server takes non-trickle SDP (every candidate in
 * it), as aiortc does. Bounded so a stuck gatherer cannot hang the page.
 */
export function gatheringComplete(pc, timeoutMs = 5000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs);
  });
}

/** Drives a <meter> from dBFS levels (-60 dB empty .. 0 dB full). */
export class LevelMeter {
  constructor(meter, label) {
    this.meter = meter;
    this.label = label;
  }

  show(rms, peak) {
    const level = Math.max(0, Math.min(1, (rms + 60) / 60));
    this.meter.value = level;
    this.meter.dataset.rms = String(rms);
    this.meter.dataset.peak = String(peak); // (numbers for the details and the tests)
    const words = rms < -55 ? "silence" : rms < -35 ? "quiet" : rms < -12 ? "good" : "loud";
    this.meter.setAttribute("aria-valuetext", words);
    if (this.label) this.label.textContent = words;
  }

  reset() {
    this.meter.value = 0;
    this.meter.setAttribute("aria-valuetext", "silence");
    if (this.label) this.label.textContent = "—";
  }
}

/** `task` as a timer calls it: a call while the last one still runs is skipped. */
export function oneAtATime(task) {
  let busy = false;
  return async () => {
    if (busy) return;
    busy = true;
    try {
      await task();
    } finally {
      busy = false;
    }
  };
}

/** Shows the page state in the status line and on <body data-state> (tests read it). */
export function stateReporter(element) {
  return (state, text) => {
    document.body.dataset.state = state;
    element.textContent = text;
    element.dataset.state = state;
  };
}

/** The token from the page URL (?token=...), passed on to the server. */
export function tokenFromUrl() {
  return new URLSearchParams(location.search).get("token");
}

/** "10:02": when something started, in the listener's own clock. */
export function clockTime(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** What to call a stream: its label ("English", "Speaker 1"), never its id. */
export function streamName(stream) {
  return stream.label || (stream.channel ? stream.channel : "A speaker");
}

/**
 * A token's claims ({role, stream, exp}), read without checking its signature: the server
 * checks every token it is given; a page only decides what it offers (a link or a QR code
 * that its token cannot open helps nobody). null when it is no token.
 */
export function tokenClaims(token) {
  const part = (token || "").split(".")[1];
  if (!part) return null;
  try {
    const text = atob(part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "="));
    const claims = JSON.parse(text);
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/** Whether `token` plays `channel` (null: whatever its holder picks): a receive (or both)
 * token for that channel or for all, not expired. */
export function tokenPlays(token, channel = null) {
  const claims = tokenClaims(token);
  if (!claims || !["receive", "both"].includes(claims.role)) return false;
  if (claims.exp && claims.exp * 1000 <= Date.now()) return false;
  return !claims.stream || channel === null || claims.stream === channel;
}

/** Whether `token` may be shown as a code others scan: an invite (a receive token made to
 * be handed out), never a speaker's or a device's own pass, which others could use to speak
 * or which the operator's Remove would cut for everyone who scanned it. */
export function tokenShareable(token, channel = null) {
  const claims = tokenClaims(token);
  return Boolean(claims && claims.role === "receive" && claims.inv === true && tokenPlays(token, channel));
}

/** `path` with `token` as its ?token= (none given: the path as it is). */
export function withToken(path, token) {
  return token ? `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : path;
}

// Which pages a token's role opens: On air reads the listing (a speaker's token gets a note
// there that points back to Speak), Listen plays, Speak sends.
const OPENS = { "/": ["receive", "both", "send"], "/listen": ["receive", "both"], "/send": ["send", "both"] };

/**
 * The header's links to On air, Listen and Speak keep the page's invite (`?token=`), and a
 * link its token cannot open is hidden. Without a token they stay as they are (an open server;
 * with auth on, a page without a token hides them: see style.css).
 */
export function keepInvite(token = tokenFromUrl()) {
  if (!token) return;
  const role = (tokenClaims(token) || {}).role;
  for (const link of document.querySelectorAll("header nav a")) {
    const roles = OPENS[link.pathname];
    if (!roles) continue;
    if (roles.includes(role)) link.href = withToken(link.pathname, token);
    else link.hidden = true;
  }
}
