// Operator console: the admin API in a page. It keeps no state: everything is read back from
// the server every REFRESH_MS, and every action is one admin API call.
import { clockTime, stateReporter } from "./relay.js";

const REFRESH_MS = 2000;
const STORED = "relay_app.admin_token";
const $ = (id) => document.getElementById(id);
const setStatus = stateReporter($("status"));

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

function button(text, label, onClick, describedBy = null) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  if (describedBy) b.setAttribute("aria-describedby", describedBy); // what it does, in words
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

// A channel's state in words; a speaker whose sound stopped arriving reads "Silent for 3 s",
// counted in place between refreshes (the row is not rebuilt for it).
function channelState(channel) {
  if (channel.locked) return "Locked";
  if (channel.speaker_lost) return `Silent for ${Math.max(1, Math.round(Date.now() / 1000 - channel.silent_since))} s: ${channel.speaking || "the speaker"}'s connection dropped`;
  if (channel.live) return channel.speaking ? `On air: ${channel.speaking}` : "On air";
  return "—";
}

function showSilence(channels) {
  for (const channel of channels) {
    const state = document.querySelector(`tr[data-channel="${CSS.escape(channel.channel)}"] td.state`);
    if (state) state.textContent = channelState(channel);
  }
}

function showChannels(channels) {
  showLevels(channels);
  showSilence(channels);
  if (!changed("channels", channels.map(({ level_dbfs, silent_since, ...rest }) => rest))) return;
  const rows = channels.map((channel) => {
    const name = channel.label || channel.channel;
    const row = document.createElement("tr");
    row.dataset.channel = channel.channel;
    cell(row, name);
    cell(row, channelState(channel)).className = "state";
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
    for (const next of channel.waiting || []) { // speakers waiting for their turn (the booth)
      const handover = () => post(`/admin/channels/${encodeURIComponent(channel.channel)}/handover`, { to: next.connection_id });
      actions.append(button(`Hand over to ${next.name}`, `Hand over to ${next.name} on ${name} (waiting to speak)`, handover));
    }
    return row;
  });
  $("channels").replaceChildren(...rows);
}

// What someone is doing, in the console's words (the server says "speaking", "waiting to
// speak", "listening" or "connected").
function doing(session) {
  const what = session.what || "connected";
  const words = what.charAt(0).toUpperCase() + what.slice(1);
  if (session.role === "receiver" && session.waiting) return `${words} (waiting for a speaker)`;
  if (session.via === "ogg") return `${words} (plain audio)`;
  return words;
}

function plural(count, one, many = `${one}s`) {
  return `${count} ${count === 1 ? one : many}`;
}

// How they came in, when others share it: an invite (a link or code many use), a token.
function tokenNote(session) {
  const token = session.token;
  if (!token) return "";
  if (token.kind === "pass" || token.kind === "invite") {
    const others = (token.invite_connections || 1) - token.connections;
    return others > 0 ? `came with an invite that ${plural(others, "other connection")} use${others === 1 ? "s" : ""}` : "came with an invite";
  }
  return token.connections > 1 ? `their token is used by ${plural(token.connections, "connection")}` : "";
}

function kb(bytes) {
  return bytes > 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${Math.round(bytes / 1e3)} kB`;
}

function whoCell(row, session) {
  const td = cell(row, "");
  td.className = "who";
  td.append(Object.assign(document.createElement("strong"), { textContent: session.name || "Someone" }));
  if (session.self_named) td.append(Object.assign(document.createElement("small"), { className: "note", textContent: "named themselves" }));
  const note = tokenNote(session);
  if (note) td.append(Object.assign(document.createElement("small"), { className: "note", textContent: note }));
  // (on a phone the Device column is left out: the device goes under the name)
  td.append(Object.assign(document.createElement("small"), { className: "note phone-only", textContent: session.device || "Unknown device" }));
}

function deviceCell(row, session) {
  const td = cell(row, session.device || "Unknown device");
  td.className = "extra";
  td.append(Object.assign(document.createElement("small"), { className: "note", textContent: session.remote }));
}

function showSessions(sessions) {
  // (bytes change all the time: they alone do not rebuild the table)
  if (!changed("sessions", sessions.map(({ bytes_in, bytes_out, audio_bytes_in, loss, ...rest }) => rest))) return;
  const rows = sessions.map((session) => {
    const row = document.createElement("tr");
    row.dataset.connection = session.connection_id;
    row.dataset.role = session.role;
    const name = session.name || "Someone";
    whoCell(row, session);
    cell(row, doing(session));
    cell(row, session.channel_label || "—");
    deviceCell(row, session);
    cell(row, clockTime(session.since)).className = "extra";
    cell(row, kb((session.bytes_in || 0) + (session.bytes_out || 0) + (session.audio_bytes_in || 0))).className = "extra";
    const actions = cell(row, "");
    actions.append(button("Disconnect", `Disconnect ${name}`, () => disconnect(session), "help-disconnect"));
    if (session.token) {
      actions.append(button("Remove", `Remove ${name}`, () => askRemove(session), "help-remove"));
    }
    return row;
  });
  $("sessions").replaceChildren(...rows);
}

async function disconnect(session) {
  const answer = await (await post(`/admin/sessions/${encodeURIComponent(session.connection_id)}/disconnect`)).json();
  const others = answer.disconnected.length - 1;
  const also = others > 0 ? ` (with ${plural(others, "other connection")} of the same device)` : "";
  say(`${session.name} was disconnected${also} and told so. Their page stays off until they reload it.`);
}

// Remove asks first, and says what it withdraws and who else holds it.
let removing = null; // the session the dialog is about

function until(session) {
  const expires = session.token && session.token.expires_at;
  return expires ? ` until ${clockTime(expires)}, when it would have expired` : "";
}

function askRemove(session) {
  removing = session;
  const { name, token } = session;
  const others = (token.invite_connections || 1) - token.connections;
  $("remove-title").textContent = `Remove ${name}?`;
  $("remove-confirm").textContent = `Remove ${name}`;
  let text;
  if (token.kind === "pass" && token.connection_only) {
    // A player (WHEP, VLC, an <audio>) that came with the shared invite keeps no pass of its own.
    text = `${name} is disconnected and told so. They came with the shared invite on a player that keeps no pass of its own, so Remove keeps out only this browser or connection: scanning the code again (or reconnecting with the same link) brings them back, unless you withdraw the invite.`;
  } else if (token.kind === "pass") {
    text = `${name} is disconnected and told so, and this device's own pass is withdrawn${until(session)}: reloading the page does not bring them back.`;
  } else if (token.kind === "invite") {
    text = `${name} uses a shared invite itself, not a pass of its own: Remove withdraws that invite${until(session)}, for everyone who came with it (${plural(token.invite_connections, "connection")} now).`;
  } else {
    text = `${name} is disconnected and told so, and their token is withdrawn${until(session)}: reloading the page does not bring them back.${token.connections > 1 ? ` ${plural(token.connections, "connection")} use this token: all of them are removed.` : ""}`;
  }
  $("remove-text").textContent = text;
  const shared = token.kind === "pass";
  $("remove-shared").hidden = !shared;
  $("remove-invite").hidden = !shared;
  if (shared) {
    $("remove-shared").textContent = others > 0
      ? `They came in with an invite (a link or code) that ${plural(others, "other connection")} use${others === 1 ? "s" : ""}; those stay, and anyone can still scan that invite again. To keep everyone with that invite out, withdraw the invite instead.`
      : "They came in with an invite (a link or code): anyone can still scan it again. To keep everyone with it out, withdraw the invite instead.";
    $("remove-invite").textContent = `Withdraw the invite: remove all ${token.invite_connections}`;
  }
  $("remove-dialog").showModal();
  $("remove-cancel").focus(); // (the safe answer first)
}

async function confirmRemove(invite) {
  const session = removing;
  $("remove-dialog").close();
  removing = null;
  if (!session) return;
  try {
    const path = `/admin/sessions/${encodeURIComponent(session.connection_id)}/remove`;
    const answer = await (await post(path, { invite })).json();
    const pass = session.token && session.token.connection_only ? "this connection's pass" : "their device's pass";
    const what = { pass, token: "their token", invite: "the invite" }[answer.withdrawn] || "their invitation";
    const count = answer.removed.length;
    say(`${session.name} was removed: ${what} is withdrawn until ${clockTime(answer.until)}${count > 1 ? `, and ${plural(count, "connection")} ended` : ""}.`);
  } catch (error) {
    if (error.message !== "refused") setStatus("error", `That did not work: ${error.message}`);
  }
  await refresh();
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

function summary(sessions) {
  const count = (what) => sessions.filter((s) => (s.what || "connected") === what).length;
  const parts = [`${count("speaking")} speaking`];
  if (count("waiting to speak")) parts.push(`${count("waiting to speak")} waiting to speak`);
  parts.push(`${count("listening")} listening`);
  if (count("connected")) parts.push(`${count("connected")} connected`);
  return `${parts.join(", ")}.`;
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
    setStatus("ready", summary(sessions.sessions));
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
$("remove-confirm").addEventListener("click", () => confirmRemove(false));
$("remove-invite").addEventListener("click", () => confirmRemove(true));
$("remove-cancel").addEventListener("click", () => $("remove-dialog").close());
$("remove-dialog").addEventListener("close", () => {
  removing = null; // (Cancel, Esc, or an answer: it is about nobody now)
});
$("invite-close").addEventListener("click", () => {
  $("invite").hidden = true;
});

async function start() {
  if (fromLink) await takeLinkToken(fromLink);
  refresh();
  setInterval(refresh, REFRESH_MS);
}

start();
