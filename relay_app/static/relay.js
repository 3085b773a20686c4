// Shared by the sender and receiver pages: the signaling socket, peer connections, the meter.
// Plain ES module, no build step.

/** A WebSocket to /ws that reconnects with backoff and delivers parsed messages. */
export class Signaling {
  constructor({ onMessage, onState, token = null }) {
    this.onMessage = onMessage;
    this.onState = onState;
    this.token = token;
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
    this.onState("connecting", "Connecting to the server…");
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
      }
      this.onMessage(message);
    };
    ws.onclose = (event) => {
      this.stopKeepalive();
      if (this.ws !== ws || this.closedByUser) return;
      const why = event.reason ? `: ${event.reason}` : "";
      const delay = this.backoff;
      this.backoff = Math.min(this.backoff * 2, 8000);
      this.onState("disconnected", `Disconnected (code ${event.code}${why}); retrying in ${(delay / 1000).toFixed(1)} s`);
      setTimeout(() => this.connect(), delay);
    };
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  // The guide's keepalive: a ping every 30 s (or sooner if the server's timeout is shorter).
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
    if (this.label) this.label.textContent = `${rms.toFixed(0)} dBFS (peak ${peak.toFixed(0)})`;
  }

  reset() {
    this.meter.value = 0;
    if (this.label) this.label.textContent = "—";
  }
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
