// On air: every channel, live or not, who is listening, and a Play button; refreshed live.
import { NEEDS_INVITE, clockTime, streamName, tokenFromUrl } from "./relay.js";

const REFRESH_MS = 3000;
const $ = (id) => document.getElementById(id);
const token = tokenFromUrl();
const adminToken = localStorage.getItem("relay_app.admin_token");
const withToken = (path) => (token ? `${path}?token=${encodeURIComponent(token)}` : path);

function setStatus(state, text) {
  document.body.dataset.state = state;
  $("status").textContent = text;
  $("status").dataset.state = state;
}

for (const link of [$("go-listen"), $("go-send")]) link.href = withToken(link.pathname);

// The QR code encodes the Listen page's LAN address (not "localhost"): show it in words too.
fetch("/qr.svg", { method: "HEAD" }).then((response) => {
  const url = response.headers.get("X-Url");
  if (!url) return;
  $("qr-url").href = url;
  $("qr-url").textContent = url;
});

function listeners(count) {
  return count === 1 ? "1 listening" : `${count} listening`;
}

function card({ key, name, description, live, count, since, href }) {
  const item = document.createElement("li");
  item.className = live ? "channel live" : "channel";
  item.dataset.channel = key;
  const title = document.createElement("h2");
  title.textContent = name;
  const state = document.createElement("p");
  state.className = "on-air";
  state.textContent = live ? `On air${since ? ` since ${since}` : ""} · ${listeners(count)}` : "Not on air";
  item.append(title);
  if (description) {
    const text = document.createElement("p");
    text.textContent = description;
    item.append(text);
  }
  item.append(state);
  const play = document.createElement("a");
  play.className = "button primary";
  play.href = withToken(href);
  play.textContent = live ? `Play ${name}` : `Open ${name}`;
  item.append(play);
  return item;
}

async function qrFor(channel) {
  // An operator (admin token on this device) gets each channel's invite QR, token and all.
  if (!adminToken) return `/qr.svg?channel=${encodeURIComponent(channel)}`;
  const response = await fetch("/admin/invites", {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${adminToken}` },
    body: JSON.stringify({ channel, ttl: "8h" }),
  });
  const invite = response.ok ? await response.json() : {};
  const query = invite.token ? `&invite=${encodeURIComponent(invite.token)}` : "";
  return `/qr.svg?channel=${encodeURIComponent(channel)}${query}`;
}

const qrCache = new Map();

async function addQr(item, channel, name) {
  if (!qrCache.has(channel)) qrCache.set(channel, await qrFor(channel));
  const figure = document.createElement("figure");
  figure.className = "qr small";
  const img = document.createElement("img");
  img.src = qrCache.get(channel);
  img.alt = `QR code: scan it with a phone to listen to ${name}`;
  img.width = 120;
  img.height = 120;
  figure.append(img);
  item.append(figure);
}

async function refresh() {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  let status;
  try {
    const response = await fetch("/stream/status", { headers });
    if (response.status === 401 || response.status === 403) {
      setStatus("unauthorized", NEEDS_INVITE);
      return;
    }
    status = await response.json();
  } catch {
    setStatus("disconnected", "Reconnecting…");
    return;
  }
  const items = [];
  for (const channel of status.channels) {
    const stream = status.streams.find((s) => s.stream_id === channel.channel);
    items.push(
      card({
        key: channel.channel,
        name: channel.label,
        description: channel.description,
        live: channel.live,
        count: channel.listeners,
        since: stream ? clockTime(stream.started_at) : "",
        href: `/listen/${encodeURIComponent(channel.channel)}`,
      }),
    );
  }
  for (const stream of status.streams.filter((s) => !s.channel)) {
    items.push(
      card({
        key: stream.stream_id,
        name: streamName(stream),
        live: true,
        count: stream.receivers + stream.http_listeners,
        since: clockTime(stream.started_at),
        href: `/listen/${encodeURIComponent(stream.stream_id)}`,
      }),
    );
  }
  $("channels").replaceChildren(...items);
  for (const channel of status.channels) {
    const item = items.find((i) => i.dataset.channel === channel.channel);
    await addQr(item, channel.channel, channel.label);
  }
  const live = status.streams.length;
  if (!items.length) setStatus("idle", "Nothing on air yet. This page updates by itself.");
  else setStatus("ready", live ? `${live} on air now.` : "Nobody is speaking right now. This page updates by itself.");
}

refresh();
setInterval(refresh, REFRESH_MS);
