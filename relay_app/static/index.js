// On air: every channel, live or not, who is listening, a Play button and a QR code each;
// refreshed live.
//
// With auth on, a link or a code is shown only with a token that works there: the visitor's
// own invite (for the channels it plays: a visitor may pass on what they hold), or invites
// minted with the operator's admin token (the console keeps it on this device). A device with
// neither shows none, and says what to do.
import { clockTime, keepInvite, NEEDS_INVITE, oneAtATime, stateReporter, streamName, tokenClaims, tokenFromUrl, tokenPlays, tokenShareable, withToken } from "./relay.js";
import { Invites, authRequired, qrSource, storedAdminToken } from "./invites.js";

const REFRESH_MS = 3000;
const $ = (id) => document.getElementById(id);
const setStatus = stateReporter($("status"));
const visitor = tokenFromUrl();
const invites = new Invites(storedAdminToken());
let authOn = null; // whether the server wants tokens (null: not known yet)
const SPEAKER_ONLY = "Your link is for speaking, not for listening: open Speak.";

/**
 * What this device may show: the listing and how it holds its tokens.
 * kind: "open" (the server wants no tokens: any token in the URL is left aside), "visitor"
 * (the page's own token), "admin" (this device mints invites), "speaker" (a send token: it
 * lists nothing), "none".
 */
async function access() {
  if (authOn === null) authOn = await authRequired();
  if (visitor && authOn) {
    const response = await fetch("/stream/status", { headers: { Authorization: `Bearer ${visitor}` } });
    if (response.status === 401 || response.status === 403) {
      const role = (tokenClaims(visitor) || {}).role;
      return { kind: response.status === 403 && role === "send" ? "speaker" : "none" };
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return { kind: "visitor", ...(await response.json()) };
  }
  if (!authOn) {
    const response = await fetch("/stream/status");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return { kind: "open", ...(await response.json()) };
  }
  invites.useStored(); // (a token pasted into the console meanwhile is taken at once)
  if (!invites.adminToken || invites.refused) return { kind: "none" };
  const response = await fetch("/admin/channels", { headers: { Authorization: `Bearer ${invites.adminToken}` } });
  if (response.status === 401 || response.status === 403) {
    invites.refused = true;
    return { kind: "none" };
  }
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  const channels = (await response.json()).channels.filter((c) => c.label !== undefined);
  return { kind: "admin", channels, streams: [] };
}

/** The token a link to `channel` carries: "" (none needed), or null (no link can work). */
async function tokenFor(kind, channel) {
  if (kind === "open") return "";
  if (kind === "visitor") return tokenPlays(visitor, channel) ? visitor : null;
  if (kind === "admin") return invites.for(channel);
  return null;
}

function listeners(count) {
  return count === 1 ? "1 listening" : `${count} listening`;
}

function card({ key, name, description, live, count, since, channel, token }) {
  const item = document.createElement("li");
  item.className = live ? "channel live" : "channel";
  item.dataset.channel = key;
  const title = document.createElement("h2");
  title.textContent = name;
  const state = document.createElement("p");
  state.className = "on-air";
  state.textContent = live ? `On air${since ? ` since ${since}` : ""}${count === undefined ? "" : ` · ${listeners(count)}`}` : "Not on air";
  item.append(title);
  if (description) {
    const text = document.createElement("p");
    text.textContent = description;
    item.append(text);
  }
  item.append(state);
  if (token === null) return item; // nothing this device holds would open it
  const play = document.createElement("a");
  play.className = "button primary";
  play.href = withToken(`/listen/${encodeURIComponent(key)}`, token);
  play.textContent = live ? `Play ${name}` : `Open ${name}`;
  item.append(play);
  if (channel && (token === "" || tokenShareable(token, channel))) {
    const figure = document.createElement("figure");
    figure.className = "qr small";
    const img = document.createElement("img");
    img.addEventListener("error", () => figure.remove()); // refused (an invite that expired)
    img.src = qrSource(channel, token);
    img.alt = `QR code: scan it with a phone to listen to ${name}`;
    img.width = 160;
    img.height = 160;
    figure.append(img);
    item.append(figure);
  }
  return item;
}

// The big code: the Listen page, for whoever has no channel in mind. With auth on only a
// visitor's own receive token can carry it (the admin API mints invites per channel).
let bigCode = null;

async function showBigCode(kind) {
  let token = null;
  let channel = null;
  if (kind === "open") token = "";
  else if (kind === "visitor" && tokenShareable(visitor)) {
    token = visitor;
    channel = (tokenClaims(visitor) || {}).stream || null;
  }
  const source = token === null ? null : qrSource(channel, token);
  if (source === bigCode) return;
  bigCode = source;
  $("qr-figure").hidden = source === null;
  if (source === null) return;
  $("qr").src = source;
  // The code encodes the Listen page's LAN address (not "localhost"): shown in words too.
  const response = await fetch(source, { method: "HEAD" });
  const url = response.ok ? response.headers.get("X-Url") : null;
  if (!url) {
    $("qr-figure").hidden = true;
    return;
  }
  $("qr-url").href = url;
  $("qr-url").textContent = url.replace(/token=.*/, "token=…");
}

// Listen and Speak: shown once it is known that they open for this device (the bare pages,
// on an open server; with the visitor's token where it opens them; none for an operator,
// whose invites are per channel, or without a token).
let linksFor = null;

function showLinks(kind) {
  if (kind === linksFor) return;
  linksFor = kind;
  const mine = kind === "open" || kind === "visitor" || kind === "speaker";
  for (const link of [$("go-listen"), $("go-send")]) link.hidden = !mine;
  if (kind === "visitor" || kind === "speaker") keepInvite(visitor);
  $("go-entrance").hidden = kind !== "admin";
}

let shown = "";
// (a slow answer: the next tick asks again)
const refresh = oneAtATime(() => show());

async function show() {
  let status;
  try {
    status = await access();
  } catch {
    setStatus("disconnected", "Reconnecting…");
    return;
  }
  showLinks(status.kind);
  if (status.kind === "speaker") {
    setStatus("speaker", SPEAKER_ONLY);
    return;
  }
  if (status.kind === "none") {
    setStatus("unauthorized", NEEDS_INVITE);
    return;
  }
  const cards = [];
  for (const channel of status.channels) {
    const stream = status.streams.find((s) => s.stream_id === channel.channel);
    cards.push({
      key: channel.channel,
      name: channel.label,
      description: channel.description,
      live: channel.live,
      count: channel.listeners,
      since: stream ? clockTime(stream.started_at) : "",
      channel: channel.channel,
      token: await tokenFor(status.kind, channel.channel),
    });
  }
  for (const stream of status.streams.filter((s) => !s.channel)) {
    cards.push({
      key: stream.stream_id,
      name: streamName(stream),
      live: true,
      count: stream.receivers + stream.http_listeners,
      since: clockTime(stream.started_at),
      token: await tokenFor(status.kind, stream.stream_id),
    });
  }
  // Rebuilt only when something changed: a rebuilt card takes the keyboard focus away.
  const signature = JSON.stringify(cards);
  if (signature !== shown) {
    shown = signature;
    $("channels").replaceChildren(...cards.map(card));
  }
  await showBigCode(status.kind);
  const live = status.channels.filter((c) => c.live).length + status.streams.filter((s) => !s.channel).length;
  if (!cards.length) setStatus("idle", "Nothing on air yet. This page updates by itself.");
  else setStatus("ready", live ? `${live} on air now.` : "Nobody is speaking right now. This page updates by itself.");
}

refresh();
setInterval(refresh, REFRESH_MS);
