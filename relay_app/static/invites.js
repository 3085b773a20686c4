// Invites the pages put in their links and QR codes: minted with the operator's admin token
// (the console keeps it on this device), and how a page tells that the server wants tokens.

/** Where the console keeps the operator's admin token (admin.js). */
export const ADMIN_TOKEN_KEY = "relay_app.admin_token";
/** An invite works this long: the day of an event. */
export const INVITE_HOURS = 12;
/** A new invite is minted once the one shown is this old: a code scanned at any moment holds
 * at least INVITE_HOURS - RENEW_HOURS (11 h) of listening. */
export const RENEW_HOURS = 1;
const HOUR_MS = 3600 * 1000;

export function storedAdminToken() {
  return localStorage.getItem(ADMIN_TOKEN_KEY);
}

/** Whether the server wants tokens (auth.secret set): `/health` says so, to anyone. */
export async function authRequired() {
  const health = await fetch("/health");
  const body = health.ok ? await health.json() : {};
  return body.auth_required !== false; // unknown: assume the stricter
}

/**
 * One invite per channel, minted with the admin token through `POST /admin/invites` and
 * minted again every RENEW_HOURS. `for(channel)` is the token to put in a link, "" when the
 * server needs none, or null when this device cannot mint (no admin token, or a refused one)
 * and holds no invite that still works.
 */
export class Invites {
  constructor(adminToken) {
    this.adminToken = adminToken;
    this.held = new Map(); // channel -> {token, minted, expires} (ms)
    this.refused = false; // the server refused the admin token (401/403)
  }

  /** Takes the admin token stored now (the console may have replaced it). */
  useStored() {
    const stored = storedAdminToken();
    if (stored === this.adminToken) return;
    this.adminToken = stored;
    this.refused = false;
  }

  async for(channel) {
    const held = this.held.get(channel);
    if (held && Date.now() - held.minted < RENEW_HOURS * HOUR_MS) return held.token;
    if (!this.adminToken) return null;
    let response = null;
    try {
      response = await fetch("/admin/invites", {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${this.adminToken}` },
        body: JSON.stringify({ channel, ttl: `${INVITE_HOURS}h` }),
      });
    } catch {
      response = null; // the server is away: what is held may still work
    }
    if (response && response.ok) {
      const invite = await response.json();
      this.refused = false;
      const fresh = { token: invite.token || "", minted: Date.now(), expires: invite.expires_at * 1000 };
      this.held.set(channel, fresh);
      return fresh.token;
    }
    if (response && (response.status === 401 || response.status === 403)) this.refused = true;
    // Kept while it works for a while yet (a phone that scans it has time to play).
    if (held && (held.token === "" || held.expires - Date.now() > 0.25 * HOUR_MS)) return held.token;
    this.held.delete(channel);
    return null;
  }

  /** A channel's invite no longer works (the operator withdrew it): the next `for` mints
   * another instead of waiting for the hourly renewal. */
  forget(channel) {
    this.held.delete(channel);
  }

  /** When the oldest invite held stops working (ms), or null. */
  get expires() {
    const times = [...this.held.values()].filter((h) => h.token).map((h) => h.expires);
    return times.length ? Math.min(...times) : null;
  }
}

/** The QR code of a channel's Listen link, carrying `token` (the server checks that it plays
 * the channel, and refuses the code otherwise). */
export function qrSource(channel, token) {
  const query = new URLSearchParams();
  if (channel) query.set("channel", channel);
  if (token) query.set("invite", token);
  const text = query.toString();
  return text ? `/qr.svg?${text}` : "/qr.svg";
}
