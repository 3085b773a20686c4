// Operator console: the admin API in a page. It keeps no state: everything is read back from
// the server every REFRESH_MS, and every action is one admin API call.
import { clockTime } from "./relay.js";

const REFRESH_MS = 2000;
const STORED = "relay_app.admin_token";
const $ = (id) => document.getElementById(id);

// An admin link (`/admin#token=...` or `?token=`): its token leaves the URL at once, and is
// kept only if the server accepts it (see takeLinkToken).
const fromLink = new URLSearchParams(location.hash.slice(1)).get("token") || new URLSearchParams(location.search).get("token");
if (fromLink) history.replaceState(null, "", "/admin");
let offered = null; // a link's working token, waiting for the operator's answer
let linkRefused = false; // the server refused the link's token (said in the status too)
const LINK_REFUSED = "The admin token in the link you opened is not accepted here (wrong or expired).";

function say(text) {
  $("notice").textContent = text;
  $("notice").hidden = false;
}

// Whether the server takes `token` for the admin API: true, false (refused), or null (no
// answer: the server is away, so nothing can be told).
async function accepted(token) {
  try {
    const response = await fetch("/admin/channels", { headers: { Authorization: `Bearer ${token}` } });
    if (response.status === 401 || response.status === 403) return false;
    return response.ok ? true : null;
  } catch {
    return null;
  }
}

// A link's token replaces nothing that works unless the operator says so: anyone can send the
// operator a link. Refused by the server, it is not kept at all; accepted, it is kept at once
// only where this device has no token, or one the server refuses; otherwise the operator is
// asked (#link-token), and the console goes on with the token it has.
async function takeLinkToken(token) {
  const current = localStorage.getItem(STORED);
  if (token === current) return;
  if ((await accepted(token)) === false) {
    linkRefused = true;
    say(current ? `${LINK_REFUSED} This console keeps the admin token it had.` : LINK_REFUSED);
    return;
  }
  if (!current || (await accepted(current)) === false) {
    localStorage.setItem(STORED, token);
    return;
  }
  offered = token;
  $("link-token").hidden = false;
}

function answerLinkToken(use) {
  if (use && offered) localStorage.setItem(STORED, offered);
  offered = null;
  $("link-token").hidden = true;
  say(use ? "This console now uses the admin token from the link." : "This console kept the admin token it had; the link's token was not stored.");
  refresh();
}

function setStatus(state, text) {
  document.body.dataset.state = state;
  $("status").textContent = text;
  $("status").dataset.state = state;
}

// (Shown alone: the page hides everything else while unauthorized.)
function unauthorizedText(token) {
  if (linkRefused) return `${LINK_REFUSED} ${token ? "Nor is the one this device had: paste a new one." : "Paste an admin token to use this console."}`;
  return token ? "That admin token is not accepted here (wrong or expired). Paste a new one." : "Paste an admin token to use this console.";
}

async function api(path, options = {}) {
  const token = localStorage.getItem(STORED);
  const headers = { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => ({}));
    console.info(`relay: admin API refused: ${body.message || response.status}`);
    $("login").hidden = false;
    setStatus("unauthorized", unauthorizedText(token));
    throw new Error("refused");
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.message || `HTTP ${response.status}`);
  }
  return response;
}

const post = (path, body) => api(path, { method: "POST", body: JSON.stringify(body || {}) });

function button(text, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      await onClick();
      await refresh();
    } catch (error) {
      if (error.message !== "refused") setStatus("error", `That did not work: ${error.message}`);
    } finally {
      b.disabled = false;
    }
  });
  return b;
}

function cell(row, content) {
  const td = document.createElement("td");
  if (content instanceof Node) td.append(content);
  else td.textContent = content;
  row.append(td);
  return td;
}

function levelMeter(dbfs, name) {
  const meter = document.createElement("meter");
  meter.min = 0;
  meter.max = 1;
  meter.value = dbfs == null ? 0 : Math.max(0, Math.min(1, (dbfs + 60) / 60));
  const words = dbfs == null ? "silence" : dbfs < -55 ? "silence" : dbfs < -35 ? "quiet" : dbfs < -12 ? "good" : "loud";
  meter.setAttribute("aria-label", `Sound on ${name}: ${words}`);
  meter.setAttribute("aria-valuetext", words);
  return meter;
}

async function showInvite(channel, label) {
  const invite = await (await post("/admin/invites", { channel, ttl: "8h" })).json();
  const query = invite.token ? `?token=${encodeURIComponent(invite.token)}` : "";
  const url = `${location.origin}/listen/${encodeURIComponent(channel)}${query}`;
  $("invite-title").textContent = `Invite to ${label} (works 8 hours)`;
  $("invite-qr").src = `/qr.svg?channel=${encodeURIComponent(channel)}${invite.token ? `&invite=${encodeURIComponent(invite.token)}` : ""}`;
  $("invite-qr").alt = `QR code: scan it with a phone to listen to ${label}`;
  $("invite-url").href = url;
  $("invite-url").textContent = url.replace(/token=.*/, "token=…");
  $("invite").hidden = false;
  $("invite-close").focus();
}

// Rows are rebuilt only when what they show changed (not every refresh): a rebuilt row would
// take the keyboard focus away from the button someone is on. Levels update in place.
const shown = { channels: "", sessions: "" };

function changed(kind, data) {
  const signature = JSON.stringify(data);
  if (shown[kind] === signature) return false;
  shown[kind] = signature;
  return true;
}

function showLevels(channels) {
  for (const channel of channels) {
    const meter = document.querySelector(`tr[data-channel="${CSS.escape(channel.channel)}"] meter`);
    if (!meter) continue;
    const fresh = levelMeter(channel.live ? channel.level_dbfs : null, channel.label || channel.channel);
    meter.value = fresh.value;
    meter.setAttribute("aria-valuetext", fresh.getAttribute("aria-valuetext"));
    meter.setAttribute("aria-label", fresh.getAttribute("aria-label"));
  }
}

function showChannels(channels) {
  showLevels(channels);
  if (!changed("channels", channels.map(({ level_dbfs, ...rest }) => rest))) return;
  const rows = channels.map((channel) => {
    const name = channel.label || channel.channel;
    const row = document.createElement("tr");
    row.dataset.channel = channel.channel;
    cell(row, name);
    cell(row, channel.locked ? "Locked" : channel.live ? "On air" : "—");
    cell(row, String(channel.listeners || 0));
    cell(row, levelMeter(channel.live ? channel.level_dbfs : null, name));
    const actions = cell(row, "");
    const action = channel.locked ? "unlock" : "lock";
    actions.append(
      button(channel.locked ? "Unlock" : "Lock", `${channel.locked ? "Unlock" : "Lock"} ${name}`, () => post(`/admin/channels/${encodeURIComponent(channel.channel)}/${action}`)),
      button("Invite", `Invite listeners to ${name}`, () => showInvite(channel.channel, name)),
    );
    if (channel.live) {
      actions.append(button("Stop", `Stop the speaker on ${name}`, () => post(`/admin/streams/${encodeURIComponent(channel.channel)}/stop`)));
    }
    return row;
  });
  $("channels").replaceChildren(...rows);
}

function who(session) {
  if (session.role === "sender") return "Speaker";
  if (session.role === "receiver") return session.waiting ? "Listener (waiting)" : "Listener";
  if (session.role === "listener") return "Listener (plain audio)";
  return "Connected";
}

function kb(bytes) {
  return bytes > 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${Math.round(bytes / 1e3)} kB`;
}

function showSessions(sessions) {
  // (bytes change all the time: they alone do not rebuild the table)
  if (!changed("sessions", sessions.map(({ bytes_in, bytes_out, audio_bytes_in, ...rest }) => rest))) return;
  const rows = sessions.map((session) => {
    const row = document.createElement("tr");
    row.dataset.connection = session.connection_id;
    row.dataset.role = session.role;
    cell(row, who(session));
    cell(row, session.channel || "—");
    cell(row, session.remote);
    cell(row, clockTime(session.since)).className = "extra";
    cell(row, kb((session.bytes_in || 0) + (session.bytes_out || 0) + (session.audio_bytes_in || 0))).className = "extra";
    cell(row, (session.user_agent || "—").slice(0, 60)).className = "extra";
    const label = `${who(session)} from ${session.remote}${session.channel ? ` on ${session.channel}` : ""}`;
    cell(row, button("Disconnect", `Disconnect ${label}`, () => post(`/admin/sessions/${session.connection_id}/kick`, { reason: "disconnected by the operator" })));
    return row;
  });
  $("sessions").replaceChildren(...rows);
}

async function download(name) {
  const blob = await (await api(`/admin/recordings/${encodeURIComponent(name)}`)).blob();
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

function showRecordings(data) {
  if (!data.enabled && !data.recordings.length) {
    $("recordings").replaceChildren(Object.assign(document.createElement("li"), { textContent: "Recording is off (recording.enabled)." }));
    return;
  }
  const items = data.recordings.map((recording) => {
    const item = document.createElement("li");
    item.append(`${recording.name} (${kb(recording.bytes)}${recording.recording ? ", recording now" : ""}) `);
    item.append(button("Download", `Download ${recording.name}`, () => download(recording.name)));
    return item;
  });
  $("recordings").replaceChildren(...items);
}

async function refresh() {
  try {
    const [channels, sessions, recordings] = await Promise.all([
      api("/admin/channels").then((r) => r.json()),
      api("/admin/sessions").then((r) => r.json()),
      api("/admin/recordings").then((r) => r.json()),
    ]);
    $("login").hidden = true;
    showChannels(channels.channels);
    showSessions(sessions.sessions);
    showRecordings(recordings);
    const speakers = sessions.sessions.filter((s) => s.role === "sender").length;
    setStatus("ready", `${speakers} speaking, ${sessions.sessions.length - speakers} listening or connected.`);
  } catch (error) {
    if (error.message !== "refused") setStatus("disconnected", "Reconnecting…");
  }
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem(STORED, $("admin-token").value.trim());
  $("admin-token").value = "";
  $("notice").hidden = true;
  linkRefused = false;
  refresh();
});
$("link-token").addEventListener("submit", (event) => {
  event.preventDefault();
  answerLinkToken(true);
});
$("link-token-keep").addEventListener("click", () => answerLinkToken(false));
$("invite-close").addEventListener("click", () => {
  $("invite").hidden = true;
});

async function start() {
  if (fromLink) await takeLinkToken(fromLink);
  refresh();
  setInterval(refresh, REFRESH_MS);
}

start();
