// What keeps a phone in a pocket playing: a screen Wake Lock while audio plays, Media Session
// metadata and controls on the lock screen, and the plain-HTTP stream when the browser
// suspends WebRTC in the background (Android does when the screen goes off).

const ARTWORK = [
  { src: "/static/icons/icon-192.png", sizes: "192x192", type: "image/png" },
  { src: "/static/icons/icon-512.png", sizes: "512x512", type: "image/png" },
];

export class PhoneListening {
  constructor(audio, { onPlay, onPause }) {
    this.audio = audio;
    this.wakeLock = null;
    this.wakeLockState = "none"; // none | requested | active | released | unavailable | denied: …
    this.playing = false;
    if ("mediaSession" in navigator) {
      navigator.mediaSession.setActionHandler("play", onPlay);
      navigator.mediaSession.setActionHandler("pause", onPause);
      navigator.mediaSession.setActionHandler("stop", onPause);
    }
    // A wake lock is released whenever the page is hidden: take it again on return.
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && this.playing) this.requestWakeLock();
    });
  }

  async started(title) {
    this.playing = true;
    if ("mediaSession" in navigator) {
      navigator.mediaSession.metadata = new MediaMetadata({
        title, artist: "relay_app", album: location.host, artwork: ARTWORK,
      });
      navigator.mediaSession.playbackState = "playing";
    }
    await this.requestWakeLock();
  }

  stopped() {
    this.playing = false;
    if ("mediaSession" in navigator) navigator.mediaSession.playbackState = "paused";
    if (this.wakeLock) this.wakeLock.release().catch(() => {});
    this.wakeLock = null;
  }

  async requestWakeLock() {
    if (!("wakeLock" in navigator)) {
      this.wakeLockState = "unavailable"; // needs HTTPS on a LAN address: use the HTTP stream
      return;
    }
    if (this.wakeLock && !this.wakeLock.released) return;
    this.wakeLockState = "requested";
    try {
      this.wakeLock = await navigator.wakeLock.request("screen");
      this.wakeLockState = "active";
      this.wakeLock.addEventListener("release", () => { this.wakeLockState = "released"; });
    } catch (error) {
      this.wakeLockState = `denied: ${error.name}`;
    }
  }
}

// Calls `onStalled` once WebRTC audio has stopped arriving for `seconds` while the page is
// hidden: the browser suspended it, and the plain-HTTP stream keeps playing instead.
export function watchBackgroundStall(getPc, onStalled, seconds = 4) {
  let last = null;
  let quietSince = null;
  setInterval(async () => {
    const pc = getPc();
    if (!pc || document.visibilityState !== "hidden") {
      quietSince = null;
      return;
    }
    let received = 0;
    (await pc.getStats()).forEach((report) => {
      if (report.type === "inbound-rtp" && report.kind === "audio") received = report.packetsReceived;
    });
    const now = performance.now();
    if (received !== last) {
      last = received;
      quietSince = null;
    } else if (quietSince === null) {
      quietSince = now;
    } else if (now - quietSince > seconds * 1000) {
      quietSince = null;
      onStalled();
    }
  }, 1000);
}
