// Receiver page: relay -> WebRTC -> speakers. Waits, retries and rejoins on its own.
import { LevelMeter, Signaling, clockTime, gatheringComplete, newPeerConnection, stateReporter, streamName, tokenFromUrl } from "./relay.js";
import { PhoneListening, watchBackgroundStall } from "./phone.js";
import { NEEDS_INVITE, keepInvite } from "./relay.js";

const RETRY_MS = 2000; // the guide's auto-retry on "No audio stream available"
const SPEAKER_STOPPED = "The speaker has stopped; this page will play the next one.";
const LIST_REFRESH_MS = 5000;

const $ = (id) => document.getElementById(id);
const setState = stateReporter($("status"));
const meter = new LevelMeter($("level"), $("level-text"));
const audio = $("audio");
const playButton = $("play");
const streamSelect = $("stream-select");

let pc = null;
let retryTimer = null;
let listTimer = null;
let currentStream = null;
let remoteStream = null;
const labels = new Map(); // channel -> label, from available_streams
// Plain HTTP instead of WebRTC: chosen (the button), or `auto` when the browser suspended
// WebRTC in the background; then it comes back to WebRTC when the page is visible again.
let httpMode = null; // null | { streamId, auto }
const backgroundButton = $("background");
const phone = new PhoneListening(audio, { onPlay: play, onPause: () => audio.pause() });

const signaling = new Signaling({ onMessage, onState, token: tokenFromUrl() });
keepInvite(); // the header's links keep this page's invite

// The operator ended this page's connection (Disconnect, or Remove): it stays off.
const ENDED_BY_OPERATOR = ["dismissed", "removed"];

function onState(state, text) {
  if (state === "disconnected" || state === "unauthorized" || ENDED_BY_OPERATOR.includes(state)) {
    closePeer();
    clearTimeout(retryTimer);
  }
  if (state === "unauthorized" || ENDED_BY_OPERATOR.includes(state)) clearInterval(listTimer);
  if (ENDED_BY_OPERATOR.includes(state)) stopEverything();
  setState(state, text);
}

/** Nothing plays and nothing retries (the plain-audio stream neither) until a reload; the
 * page shows only what the operator's message says. */
function stopEverything() {
  httpMode = null;
  audio.pause();
  audio.removeAttribute("src");
  audio.srcObject = null;
  for (const part of document.querySelectorAll("main > :not(h1, #status, #reload)")) part.style.display = "none";
}

// The channel to play: `/listen/<channel>`, else the last one picked on this device.
const REMEMBERED = "relay_app.listen.choice";
let preferred = decodeURIComponent(location.pathname.split("/")[2] || "") || localStorage.getItem(REMEMBERED) || "";

/** What people call a stream: its channel's label, "Speaker 1", never its id. */
function nameOf(streamId) {
  return labels.get(streamId) || (streamId && !streamId.startsWith("stream_") ? streamId : "the speaker");
}

function chosenStream() {
  return streamSelect.value || preferred || null; // "" = the newest stream
}

function requestStream() {
  clearTimeout(retryTimer);
  const request = { type: "start_receiving" };
  const chosen = chosenStream();
  if (chosen) request.stream_id = chosen;
  if (signaling.send(request)) setState("requesting", "Looking for the speaker…");
}

function retrySoon(text) {
  if (pc) signaling.send({ type: "stop" }); // drop any half-open media on the server first
  closePeer();
  setState("waiting", text);
  clearTimeout(retryTimer);
  retryTimer = setTimeout(requestStream, RETRY_MS);
}

// The same stream as plain HTTP Ogg/Opus on the audio port, for players without WebRTC.
function showHttpUrl(streamId) {
  const link = $("http-url");
  const port = signaling.welcome && signaling.welcome.config.audio_port;
  if (!streamId || !port) {
    link.hidden = true;
    return;
  }
  const token = signaling.token; // (this device's own pass, for an invite)
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  link.href = `${location.protocol}//${location.hostname}:${port}/stream/${streamId}.ogg${query}`;
  link.textContent = link.href.replace(/\?token=.*$/, "?token=…");
  link.hidden = false;
}

// The level meter is drawn from the audio this page plays (WebAudio), not from server
// messages: levels for every listener would cost the server a message per listener 10 times a
// second, and this shows what the listener actually hears.
let meterAudio = null; // { ctx, timer }

function meterFrom(stream) {
  stopMeter();
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const wave = new Float32Array(analyser.fftSize);
  const dbfs = (value) => (value > 0 ? Math.max(-100, 20 * Math.log10(value)) : -100);
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(wave);
    let sum = 0;
    let peak = 0;
    for (const x of wave) {
      sum += x * x;
      peak = Math.max(peak, Math.abs(x));
    }
    const rms = dbfs(Math.sqrt(sum / wave.length));
    meter.show(rms, dbfs(peak));
    $("level-dbfs").textContent = `${rms.toFixed(0)} dBFS`;
  }, 100);
  meterAudio = { ctx, timer };
}

function stopMeter() {
  if (!meterAudio) return;
  clearInterval(meterAudio.timer);
  meterAudio.ctx.close();
  meterAudio = null;
}

function closePeer() {
  stopMeter();
  if (!httpMode) phone.stopped();
  if (pc) pc.close();
  pc = null;
  currentStream = null;
  remoteStream = null;
  $("stream-id").textContent = "—";
  $("ice").textContent = "—";
  meter.reset();
}

async function answerOffer(message) {
  closePeer();
  currentStream = message.stream_id;
  $("stream-id").textContent = message.stream_id;
  showHttpUrl(message.stream_id);
  if (!message.stream_id.startsWith("stream_")) {
    history.replaceState(null, "", `/listen/${encodeURIComponent(message.stream_id)}${location.search}`);
  }
  setState("negotiating", `Connecting to ${nameOf(message.stream_id)}…`);
  pc = newPeerConnection(signaling.welcome);
  const thisPc = pc;
  pc.ontrack = (event) => {
    remoteStream = event.streams[0] || new MediaStream([event.track]);
    audio.srcObject = remoteStream;
    meterFrom(remoteStream);
    play();
  };
  pc.onconnectionstatechange = () => {
    if (pc !== thisPc) return;
    $("ice").textContent = pc.connectionState;
    if (pc.connectionState === "connected" && !audio.paused) setState("playing", `Playing ${nameOf(currentStream)}`);
    if (pc.connectionState === "failed") retrySoon("The sound was cut off; trying again…");
  };
  await pc.setRemoteDescription({ type: "offer", sdp: message.sdp });
  await pc.setLocalDescription(await pc.createAnswer());
  await gatheringComplete(pc);
  if (pc !== thisPc) return;
  signaling.send({ type: "answer", sdp: pc.localDescription.sdp });
}

async function play() {
  try {
    await audio.play();
    if (meterAudio && meterAudio.ctx.state === "suspended") await meterAudio.ctx.resume();
    playButton.hidden = true;
    if (pc && pc.connectionState === "connected") setState("playing", `Playing ${nameOf(currentStream)}`);
    const playingId = httpMode ? httpMode.streamId : currentStream;
    if (playingId) await phone.started(nameOf(playingId));
  } catch (error) {
    console.info(`relay: play() refused: ${error.name}`);
    if (error.name === "NotAllowedError") {
      // Autoplay policy: the browser wants a tap first.
      playButton.hidden = false;
      setState("blocked", "Tap Play to start listening.");
    } else if (httpMode) {
      setState("waiting", SPEAKER_STOPPED); // nothing to play yet: the speaker stopped
    }
  }
}

// Channels by label (live or waiting for a sender), then unnamed live streams.
function showStreams(streams, channels) {
  const chosen = streamSelect.value || preferred;
  streamSelect.replaceChildren(new Option("Whoever is speaking", ""));
  for (const channel of channels) {
    labels.set(channel.channel, channel.label);
    const label = channel.live ? channel.label : `${channel.label} (nobody speaking yet)`;
    streamSelect.add(new Option(label, channel.channel));
  }
  for (const stream of streams.filter((s) => !s.channel)) {
    labels.set(stream.stream_id, streamName(stream));
    const label = `${streamName(stream)}, since ${clockTime(stream.started_at)}`;
    streamSelect.add(new Option(label, stream.stream_id));
  }
  if ([...streamSelect.options].some((option) => option.value === chosen)) streamSelect.value = chosen;
  $("stream-count").textContent = String(streams.length);
}

async function onMessage(message) {
  switch (message.type) {
    case "welcome":
      $("connection-id").textContent = message.connection_id;
      signaling.send({ type: "get_available_streams" });
      clearInterval(listTimer);
      listTimer = setInterval(() => signaling.send({ type: "get_available_streams" }), LIST_REFRESH_MS);
      requestStream();
      break;
    case "available_streams":
      showStreams(message.streams, message.channels || []);
      break;
    case "offer":
      await answerOffer(message);
      break;
    case "stream_ended":
      if (message.waiting) {
        // A channel: the connection stays; the next speaker plays on it by itself.
        console.info(`relay: ${message.stream_id} ended: ${message.reason}`);
        setState("waiting", message.message || SPEAKER_STOPPED);
      } else {
        console.info(`relay: ${message.stream_id} ended: ${message.reason}`);
        retrySoon(SPEAKER_STOPPED);
      }
      break;
    case "speaker_lost": // no sound from the speaker for a second: the page says so at once
      if (message.stream_id === currentStream || !currentStream) setState("speaker-lost", message.message);
      break;
    case "speaker_back":
      if (pc && pc.connectionState === "connected" && !audio.paused) setState("playing", `Playing ${nameOf(message.stream_id)}`);
      break;
    case "stream_started":
      if (message.label) labels.set(message.stream_id, message.label);
      if (pc && pc.connectionState === "connected" && !audio.paused) {
        setState("playing", `Playing ${nameOf(message.stream_id)}`);  // same connection, next speaker
      } else {
        setState("negotiating", `${nameOf(message.stream_id)}: someone is speaking; connecting…`);
      }
      break;
    case "stopped":
      break;
    case "visualization":
      if (message.stream_id === currentStream) meter.show(message.rms, message.peak);
      break;
    case "error":
      console.info(`relay: server said: ${message.message}`);
      if (message.message.includes("No audio stream")) {
        retrySoon("Waiting for someone to speak… (this page starts playing by itself)");
      } else if (/token/i.test(message.message)) {
        setState("unauthorized", NEEDS_INVITE);
      } else {
        setState("error", "Something went wrong on the server; trying again in a moment…");
        retrySoon("Waiting for someone to speak… (this page starts playing by itself)");
      }
      break;
    default:
      break;
  }
}

// The same stream as Ogg/Opus over plain HTTP from this server, in the same <audio> element:
// no WebRTC, so it keeps playing where the browser suspends WebRTC with the screen off.
function useHttp(auto) {
  const streamId = currentStream || (httpMode && httpMode.streamId);
  if (!streamId) return;
  if (pc) signaling.send({ type: "stop" });
  closePeer();
  clearTimeout(retryTimer);
  httpMode = { streamId, auto };
  const token = signaling.token;
  audio.srcObject = null;
  audio.src = `/stream/${encodeURIComponent(streamId)}.ogg${token ? `?token=${encodeURIComponent(token)}` : ""}`;
  backgroundButton.textContent = "Back to low latency (WebRTC)";
  setState("playing", `Playing ${nameOf(streamId)}; it keeps playing with the screen off (about a second behind)`);
  play();
}

function useWebRtc() {
  httpMode = null;
  audio.pause();
  audio.removeAttribute("src");
  audio.load();
  backgroundButton.textContent = "Keep playing with the screen off";
  requestStream();
}

backgroundButton.addEventListener("click", () => (httpMode ? useWebRtc() : useHttp(false)));
// Over plain HTTP the speaker stopping ends the response (or the next one has no stream yet):
// say so in plain words and try again until the next speaker starts.
for (const event of ["ended", "error"]) {
  audio.addEventListener(event, () => {
    if (!httpMode) return;
    setState("waiting", SPEAKER_STOPPED);
    setTimeout(() => httpMode && useHttp(httpMode.auto), RETRY_MS);
  });
}
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && httpMode && httpMode.auto) useWebRtc();
});
watchBackgroundStall(() => pc, () => useHttp(true));

streamSelect.addEventListener("change", () => {
  if (httpMode) {
    httpMode = null;
    audio.removeAttribute("src");
    backgroundButton.textContent = "Keep playing with the screen off";
  }
  preferred = streamSelect.value;
  localStorage.setItem(REMEMBERED, preferred);
  signaling.send({ type: "stop" });
  closePeer();
  requestStream();
});
playButton.addEventListener("click", play);
window.addEventListener("pagehide", () => signaling.close());
window.relayReceiver = {
  signaling,
  get pc() { return pc; },
  get remoteStream() { return remoteStream; },
  get streamId() { return currentStream; },
  get httpMode() { return httpMode; },
  phone,
  useHttp,
};
signaling.connect();
