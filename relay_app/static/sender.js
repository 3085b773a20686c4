// Speak page: microphone -> WebRTC -> relay; taking a channel over, waiting for one's turn and
// the interpreters' booth (what the speaker hears, who waits, the hand-over).
import { LevelMeter, NEEDS_INVITE, Signaling, gatheringComplete, newPeerConnection, keepInvite, stateReporter, tokenClaims, tokenFromUrl } from "./relay.js";
import { BoothEar } from "./booth.js";

const NEEDS_HTTPS =
  "To use your microphone this page must be opened with https:// (ask the organiser for the secure address). Listening works as it is.";
const NAME_KEPT = "relay_app.speak.name";
const RETURN_KEPT = "relay_app.speak.return";
// The ear changes a moment after the booth does: a hand-over's new speaker is audible first
// (the server sets up and tears down the ear's connection outside the hand-over's moment).
const EAR_DELAY_MS = 1000;
const labels = new Map(); // channel -> label

const $ = (id) => document.getElementById(id);
const setState = stateReporter($("status"));
const meter = new LevelMeter($("level"), $("level-text"));
const startButton = $("start");
const stopButton = $("stop");
const waitButton = $("wait");
const token = tokenFromUrl();
const claims = tokenClaims(token) || {};

let pc = null;
let micStream = null;
let micTracks = []; // the microphone's tracks, kept after release (they read "ended" then)
let wantSending = false; // the user pressed Start and not Stop: resume after a reconnect
let waiting = null; // the channel this page waits on for its turn
let onAir = null; // the channel this page speaks on (named channels only)
let booth = null; // the newest `booth` message
let busyWith = null; // who the server said speaks on the channel this page wanted

const signaling = new Signaling({ onMessage, onState: setState, token });
keepInvite(); // the header's links keep this page's invite
const ear = new BoothEar({ token, audio: $("ear"), say: (text) => ($("ear-status").textContent = text), labelOf: labelOf });

function labelOf(channel) {
  return (channel && labels.get(channel)) || channel || "this channel";
}

function chosenChannel() {
  return $("channel").value.trim();
}

/** Whether this page's token may take `channel` over (and so wait for its turn on it): a send
 * token scoped to that channel; with no token at all (an open server) anyone may. */
function mayTakeOver(channel) {
  if (!channel) return false;
  if (!token) return true;
  return ["send", "both"].includes(claims.role) && claims.stream === channel;
}

function myName() {
  return claims.name || $("name").value.trim() || undefined;
}

/** What the speaker is told when the server ends the stream, in plain words. */
function endedWords(message) {
  const words = message.message || "Your stream ended.";
  return `${words} Press Start to speak again.`;
}

/** A server refusal, as the person at the microphone needs to hear it. */
function errorWords(message) {
  const name = labelOf(chosenChannel());
  if (message.includes(" is already speaking on ")) return `${message.split(": channel")[0]}.`;
  if (message.includes("is busy")) return `Someone is already speaking on ${name}.`;
  if (message.startsWith("Taking over ") || message.startsWith("Nobody is waiting") || message.startsWith("You are not speaking")) return message;
  if (message.includes("locked")) return `${name} is closed for now. Ask the operator to open it.`;
  if (/token|authenticat/i.test(message)) return NEEDS_INVITE;
  if (message.includes("not configured")) return `There is no channel called ${name}. Pick one from the list.`;
  if (message.includes("senders")) return "Too many people are speaking at once. Try again in a moment.";
  return "The server could not start your microphone. Press Start to try again.";
}

function constraintsFrom(welcome) {
  const c = (welcome && welcome.config && welcome.config.audio_constraints) || {};
  const audio = {
    channelCount: c.channels ?? 1,
    echoCancellation: c.echo_cancellation ?? true,
    noiseSuppression: c.noise_suppression ?? true,
    autoGainControl: c.auto_gain_control ?? true,
  };
  if (c.sample_rate) audio.sampleRate = c.sample_rate;
  if (c.latency !== undefined) audio.latency = c.latency;
  return { audio, video: false };
}

function explainMicError(error) {
  if (!window.isSecureContext || !navigator.mediaDevices) {
    return NEEDS_HTTPS;
  }
  if (error.name === "NotAllowedError") return "Microphone permission was denied. Allow it in the browser's site settings and press Start again.";
  if (error.name === "NotFoundError") return "No microphone was found.";
  if (error.name === "NotReadableError") return "The microphone is in use by another program.";
  console.info(`relay: getUserMedia failed: ${error.name}: ${error.message}`);
  return "The microphone could not be opened. Close other apps that use it and press Start again.";
}

/** The Start and Wait buttons as they fit now: idle, or not. */
function showControls() {
  const idle = !wantSending && !waiting;
  startButton.disabled = !idle || !signaling.welcome;
  waitButton.hidden = !idle || !mayTakeOver(chosenChannel());
  waitButton.disabled = !signaling.welcome;
  stopButton.disabled = idle;
}

function hidePanels() {
  $("busy").hidden = true;
  $("confirm").hidden = true;
}

async function start(takeover = false) {
  hidePanels();
  if (!window.isSecureContext || !navigator.mediaDevices) {
    setState("error", explainMicError(new Error("insecure")));
    return;
  }
  wantSending = true;
  showControls();
  try {
    if (!micStream) {
      setState("permission", "Asking for the microphone…");
      micStream = await navigator.mediaDevices.getUserMedia(constraintsFrom(signaling.welcome));
      micTracks = micStream.getTracks();
    }
  } catch (error) {
    setState("error", explainMicError(error));
    wantSending = false;
    showControls();
    return;
  }
  await negotiate(takeover);
}

async function negotiate(takeover = false) {
  closePeer();
  setState("negotiating", "Connecting audio…");
  pc = newPeerConnection(signaling.welcome);
  for (const track of micStream.getAudioTracks()) pc.addTransceiver(track, { direction: "sendonly" });
  pc.onconnectionstatechange = () => {
    $("ice").textContent = pc ? pc.connectionState : "—";
    if (pc && pc.connectionState === "failed") setState("error", "Your sound could not reach the server. Check that this device is on the venue's Wi-Fi, then press Start again.");
  };
  await pc.setLocalDescription(await pc.createOffer());
  await gatheringComplete(pc);
  const request = { type: "start_sending", sdp: pc.localDescription.sdp };
  const channel = chosenChannel();
  if (channel) request.channel = channel;
  if (takeover && channel) request.takeover = true;
  const name = myName();
  if (name) request.name = name;
  signaling.send(request);
}

function closePeer() {
  if (pc) pc.close();
  pc = null;
  $("ice").textContent = "—";
}

/** The microphone is given back: its tracks end (the browser's recording light goes off). */
function releaseMic() {
  if (micStream) for (const track of micStream.getTracks()) track.stop();
  micStream = null;
  meter.reset();
}

/** Off air (stopped, taken over, refused): no microphone, no booth, the buttons for idle. */
function offAir() {
  wantSending = false;
  onAir = null;
  closePeer();
  releaseMic();
  $("stream-id").textContent = "—";
  showBooth();
  showControls();
}

function stop() {
  if (waiting) stopWaiting();
  signaling.send({ type: "stop" });
  offAir();
  setState("idle", "Stopped. Press Start to speak again.");
}

function waitForTurn() {
  const channel = chosenChannel();
  hidePanels();
  const request = { type: "wait_to_speak", channel };
  const name = myName();
  if (name) request.name = name;
  if (!signaling.send(request)) return;
  waiting = channel;
  setState("waiting", `You are waiting to speak on ${labelOf(channel)}. When it is your turn, your microphone starts by itself.`);
  showBooth();
  showControls();
}

function stopWaiting() {
  waiting = null;
  booth = null;
  showBooth();
}

function showBusy(sentence) {
  const channel = chosenChannel();
  $("busy-text").textContent = sentence;
  $("takeover").hidden = !mayTakeOver(channel);
  $("busy").hidden = false;
  if (!$("takeover").hidden) $("takeover").setAttribute("aria-label", `Take over ${labelOf(channel)}`);
}

function askTakeover() {
  const channel = chosenChannel();
  const who = busyWith || "the speaker";
  $("confirm-text").textContent = `Take over ${labelOf(channel)} from ${who}? Listeners will hear you instead, at once.`;
  $("busy").hidden = true;
  $("confirm").hidden = false;
  $("confirm-yes").focus();
}

// The booth: shown while this page speaks on a channel or waits on one.
function showBooth() {
  const channel = onAir || waiting;
  const section = $("booth");
  section.hidden = !channel;
  if (!channel) {
    earSoon(null);
    return;
  }
  $("booth-title").textContent = `Booth: ${labelOf(channel)}`;
  const me = myName();
  const speaking = booth && booth.speaking;
  const others = booth ? booth.waiting : [];
  const parts = [];
  if (speaking) parts.push(`Speaking: ${speaking}${onAir ? " (you)" : ""}.`);
  else parts.push("Nobody is speaking.");
  parts.push(others.length ? `Waiting: ${others.join(", ")}${waiting && me && others.includes(me) ? " (you)" : ""}.` : "Nobody is waiting.");
  $("booth-people").textContent = parts.join(" ");
  const handOver = $("hand-over");
  handOver.hidden = !onAir || !others.length;
  handOver.parentElement.hidden = handOver.hidden;
  if (others.length) {
    handOver.textContent = `Hand over to ${others[0]}`;
    handOver.setAttribute("aria-label", `Hand over to ${others[0]} on ${labelOf(channel)}`);
  }
  fillReturnChoices(channel);
  // While speaking: the chosen return channel; while waiting: the channel they will take over.
  earSoon(onAir ? $("return").value || null : waiting);
}

let earTimer = null;

function earSoon(channel) {
  clearTimeout(earTimer);
  if (channel === ear.channel) return;
  earTimer = setTimeout(() => ear.listen(channel), EAR_DELAY_MS);
}

// The return channel: what this device chose last, else nothing (a speaker who is no
// interpreter hears nothing they did not ask for).
function fillReturnChoices(channel) {
  const select = $("return");
  const chosen = localStorage.getItem(RETURN_KEPT) || "";
  const others = [...labels.keys()].filter((name) => name !== channel);
  const wanted = ["", ...others];
  if ([...select.options].map((o) => o.value).join() !== wanted.join()) {
    select.replaceChildren(new Option("Nothing", ""), ...others.map((name) => new Option(labels.get(name), name)));
  }
  select.value = others.includes(chosen) ? chosen : "";
}

async function onMessage(message) {
  switch (message.type) {
    case "available_streams":
      for (const c of message.channels || []) labels.set(c.channel, c.label);
      $("channel-list").replaceChildren(...(message.channels || []).map((c) => new Option(c.label, c.channel)));
      showSpeakingAs();
      showControls();
      break;
    case "welcome":
      $("connection-id").textContent = message.connection_id;
      signaling.send({ type: "get_available_streams" }); // the configured channels
      if (wantSending && micStream) {
        await negotiate(); // the socket came back: send again
      } else if (!window.isSecureContext || !navigator.mediaDevices) {
        setState("insecure", NEEDS_HTTPS); // said before Start, not after
        startButton.disabled = true;
      } else {
        waiting = null;
        setState("idle", "Ready. Press Start to speak.");
        showControls();
      }
      break;
    case "answer":
      if (pc) await pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
      break;
    case "stream_started": {
      $("stream-id").textContent = message.stream_id;
      const label = message.label || labels.get(message.stream_id);
      onAir = message.stream_id.startsWith("stream_") ? null : message.stream_id;
      waiting = null;
      setState("sending", `You are on air${label ? ` on ${label}` : ""}. Everyone listening hears you.`);
      showBooth();
      showControls();
      break;
    }
    case "stream_ended":
      console.info(`relay: stream ended: ${message.reason}`);
      offAir();
      setState("ended", endedWords(message));
      break;
    case "visualization":
      meter.show(message.rms, message.peak);
      break;
    case "booth":
      booth = message;
      showBooth();
      break;
    case "your_turn":
      if (!waiting) break;
      setState("negotiating", `Your turn on ${message.label}${message.by ? ` (handed over by ${message.by})` : ""}: starting your microphone…`);
      waiting = null;
      await start(true);
      break;
    case "error":
      console.info(`relay: server said: ${message.message}`);
      if (message.message.startsWith("Nobody is waiting") || message.message.startsWith("You are not speaking")) {
        $("booth-people").textContent = errorWords(message.message); // (on air: it goes on)
        break;
      }
      if (waiting && !wantSending) stopWaiting();
      waiting = null;
      offAir();
      if (message.message.includes(" is already speaking on ") || message.message.includes("is busy")) {
        busyWith = message.message.split(" is already speaking on ")[1] ? message.message.split(" is already speaking on ")[0] : null;
        setState("busy", errorWords(message.message));
        showBusy(errorWords(message.message));
      } else {
        setState("error", errorWords(message.message));
      }
      break;
    default:
      break;
  }
}

startButton.addEventListener("click", () => start(false));
stopButton.addEventListener("click", stop);
waitButton.addEventListener("click", waitForTurn);
$("takeover").addEventListener("click", askTakeover);
$("confirm-yes").addEventListener("click", () => start(true));
$("confirm-no").addEventListener("click", () => {
  hidePanels();
  setState("idle", "Nothing changed. Press Start to speak, or wait for your turn.");
  startButton.focus();
});
$("hand-over").addEventListener("click", () => signaling.send({ type: "hand_over", to: booth && booth.waiting[0] }));
$("return").addEventListener("change", () => {
  localStorage.setItem(RETURN_KEPT, $("return").value);
  if (onAir) earSoon($("return").value || null);
});
$("channel").addEventListener("input", () => {
  hidePanels();
  showControls();
});
$("name").addEventListener("change", () => localStorage.setItem(NAME_KEPT, $("name").value.trim()));
window.addEventListener("pagehide", () => {
  ear.listen(null);
  signaling.close();
});
window.relaySender = {
  signaling,
  ear,
  get pc() { return pc; },
  get micTracks() { return micTracks; },
};

// Who and where, when the token says (the server holds it to them): no field to fill in.
function showSpeakingAs() {
  const where = claims.stream ? ` on ${labelOf(claims.stream)}` : "";
  const line = $("speaking-as");
  line.textContent = claims.name ? `You speak as ${claims.name}${where}.` : `You speak${where}.`;
  line.hidden = !claims.name && !claims.stream;
}

// The name: the token's (it wins on the server too), else what this device was given last.
for (const id of ["name", "name-label"]) $(id).hidden = Boolean(claims.name);
if (!claims.name) $("name").value = localStorage.getItem(NAME_KEPT) || "";
// `/send?channel=english` preselects a channel; a token for one channel, that one only.
$("channel").value = claims.stream || new URLSearchParams(location.search).get("channel") || "";
for (const id of ["channel", "channel-label"]) $(id).hidden = Boolean(claims.stream);
showSpeakingAs();
signaling.connect();
