// The entrance display: a screen at the door with one big QR code per channel, its label
// under it. Opened from the console on the operator's device: with auth on, every code carries
// an invite minted with the admin token the console keeps (12 hours, a new one every hour, so
// that a phone scanning it at any moment can listen for 11 hours at least). A device that
// cannot mint shows no code: a code without a token would lead to "needs an invitation".
import { clockTime, oneAtATime, stateReporter } from "./relay.js";
import { INVITE_HOURS, Invites, RENEW_HOURS, authRequired, qrSource, storedAdminToken } from "./invites.js";

const REFRESH_MS = 10000;
const MAX_SIDE = 720; // px: larger helps no camera
const MIN_SIDE = 140;
const $ = (id) => document.getElementById(id);
const setStatus = stateReporter($("status"));
const invites = new Invites(storedAdminToken());
let authOn = null; // null: not known yet

/** The channels to show, each with the token its code carries ("" for none needed); null
 * when this device cannot make codes that work. */
async function channels() {
  if (authOn === null) authOn = await authRequired();
  if (!authOn) {
    const response = await fetch("/stream/status");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return (await response.json()).channels.map((c) => ({ ...c, token: "" }));
  }
  invites.useStored(); // (a token pasted into the console meanwhile is taken at once)
  if (!invites.adminToken) return null;
  const response = await fetch("/admin/channels", { headers: { Authorization: `Bearer ${invites.adminToken}` } });
  if (response.status === 401 || response.status === 403) invites.refused = true;
  else if (!response.ok) throw new Error(`HTTP ${response.status}`);
  // A refused admin token: the invites held are shown for as long as they work.
  const listed = response.ok ? (await response.json()).channels : [...shownChannels.values()];
  const rows = [];
  for (const channel of listed.filter((c) => c.label !== undefined)) {
    const token = await invites.for(channel.channel);
    if (token !== null) rows.push({ ...channel, token });
  }
  return rows.length || response.ok ? rows : null;
}

const shownChannels = new Map(); // channel -> its row, as shown
let shown = "";

function tile(channel) {
  const item = document.createElement("li");
  item.className = channel.live ? "code live" : "code";
  item.dataset.channel = channel.channel;
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  img.src = qrSource(channel.channel, channel.token);
  img.alt = `QR code: scan it with a phone to listen to ${channel.label}`;
  img.width = img.height = 222; // (the stylesheet sizes it to the screen)
  img.addEventListener("error", async () => {
    // Refused. An invite that no longer works (withdrawn, 400): the next refresh mints
    // another. Anything else (the server busy, 503 or 429): the next refresh tries again.
    item.remove();
    shown = "";
    const answer = await fetch(img.src, { method: "HEAD" }).catch(() => null);
    if (answer && answer.status === 400) invites.forget(channel.channel);
  });
  const caption = document.createElement("figcaption");
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = channel.label;
  caption.append(label);
  if (channel.description) {
    const text = document.createElement("span");
    text.className = "description";
    text.textContent = channel.description;
    caption.append(text);
  }
  figure.append(img, caption);
  item.append(figure);
  return item;
}

/** The largest codes that fit the screen: the column count that gives the biggest side. */
function fit() {
  const list = $("codes");
  const count = list.children.length;
  if (!count) return;
  const main = document.querySelector("main");
  const style = getComputedStyle(list);
  const across = parseFloat(style.columnGap) || 0;
  const down = parseFloat(style.rowGap) || 0;
  const width = list.clientWidth;
  const others = main.offsetHeight - list.offsetHeight;
  const height = window.innerHeight - others - 2 * parseFloat(getComputedStyle(document.body).paddingTop);
  const caption = Math.max(...[...list.querySelectorAll("figcaption")].map((c) => c.offsetHeight)) + 8;
  let best = MIN_SIDE;
  for (let columns = 1; columns <= count; columns += 1) {
    const rows = Math.ceil(count / columns);
    const side = Math.min((width - across * (columns - 1)) / columns, (height - down * (rows - 1)) / rows - caption);
    best = Math.max(best, Math.min(side, MAX_SIDE));
  }
  document.documentElement.style.setProperty("--code-side", `${Math.floor(best)}px`);
}

// (a slow answer: the next tick asks again)
const refresh = oneAtATime(() => show());

/** The tiles whose codes the server made (each loaded before it is shown: a renewed code
 * replaces the old one without a blank moment). */
async function loaded(tiles) {
  const made = await Promise.all(tiles.map((item) => item.querySelector("img").decode().then(() => item, () => null)));
  return made.filter(Boolean);
}

async function show() {
  let rows;
  try {
    rows = await channels();
  } catch {
    setStatus("disconnected", "Reconnecting…");
    return;
  }
  $("console").hidden = rows !== null;
  if (rows === null) {
    $("codes").replaceChildren();
    shownChannels.clear();
    shown = "";
    setStatus(
      "needs-admin",
      invites.adminToken
        ? "The admin token on this device is not accepted (wrong or expired): paste a new one in the console; this display takes it by itself."
        : "This display makes its codes with the operator's admin token: open it from the console, on a device where the console works.",
    );
    return;
  }
  const signature = JSON.stringify(rows.map(({ channel, label, description, live, token }) => [channel, label, description, live, token]));
  if (signature !== shown) {
    shown = signature;
    shownChannels.clear();
    for (const row of rows) shownChannels.set(row.channel, row);
    $("codes").replaceChildren(...(await loaded(rows.map(tile))));
  }
  if (!rows.length) {
    setStatus("idle", "No channels yet. Codes appear here as soon as there is a channel to listen to.");
  } else if (invites.refused) {
    const until = invites.expires;
    setStatus("stale", `The admin token on this device is no longer accepted: these codes work until ${clockTime(until / 1000)}. Paste a new one in the console; this display takes it by itself.`);
  } else if (authOn) {
    setStatus("ready", `Each code works for ${INVITE_HOURS} hours and is renewed every ${RENEW_HOURS === 1 ? "hour" : `${RENEW_HOURS} hours`}.`);
  } else {
    setStatus("ready", "Anyone on this network can listen: the codes need no invitation.");
  }
  fit(); // (after the words: they take room too)
}

// Full screen on request (browsers allow it only after a tap or a key press).
const fullscreen = $("fullscreen");
fullscreen.hidden = !document.fullscreenEnabled;
fullscreen.addEventListener("click", async () => {
  try {
    if (document.fullscreenElement) await document.exitFullscreen();
    else {
      await document.documentElement.requestFullscreen();
      // A screen at the door stays on (where the browser offers it: HTTPS or localhost).
      if ("wakeLock" in navigator) await navigator.wakeLock.request("screen").catch(() => null);
    }
  } catch (error) {
    console.info(`relay: full screen refused: ${error.name}`);
  }
});
document.addEventListener("fullscreenchange", () => {
  fullscreen.textContent = document.fullscreenElement ? "Leave full screen" : "Full screen";
  fit();
});
window.addEventListener("resize", fit);

refresh();
setInterval(refresh, REFRESH_MS);
