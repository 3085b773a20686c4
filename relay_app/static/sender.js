// Sender page: microphone -> WebRTC -> relay.
import { LevelMeter, NEEDS_INVITE, Signaling, gatheringComplete, newPeerConnection, keepInvite, stateReporter, tokenFromUrl } from "./relay.js";

const NEEDS_HTTPS =
  "To use your microphone this page must be opened with https:// (ask the organiser for the secure address). Listening works as it is.";
const labels = new Map(); // channel -> label

function channelLabel(streamId) {
  const label = labels.get(streamId) || (streamId.startsWith("stream_") ? "" : streamId);
  return label ? ` on ${label}` : "";
}

/** What the speaker is told when the server ends the stream, in plain words. */
function endedWords(reason) {
  if (reason.includes("taken over")) return "Another speaker took over this channel. Press Start to speak again.";
  if (reason.includes("operator")) return "The operator stopped your microphone. Ask them before you press Start again.";
  return "Your stream ended. Press Start to speak again.";
}

/** A server refusal, as the person at the microphone needs to hear it. */
function errorWords(message) {
  const channel = $("channel").value.trim();
  const name = labels.get(channel) || channel || "this channel";
  if (message.includes("is busy")) return `Someone is already speaking on ${name}. Ask the operator to hand it over to you, or wait until they stop.`;
  if (message.includes("locked")) return `${name} is closed for now. Ask the operator to open it.`;
  if (/token|authenticat/i.test(message)) return NEEDS_INVITE;
  if (message.includes("not configured")) return `There is no channel called ${name}. Pick one from the list.`;
  if (message.includes("senders")) return "Too many people are speaking at once. Try again in a moment.";
  return "The server could not start your microphone. Press Start to try again.";
}

const $ = (id) => document.getElementById(id);
const setState = stateReporter($("status"));
const meter = new LevelMeter($("level"), $("level-text"));
const startButton = $("start");
const stopButton = $("stop");

let pc = null;
let micStream = null;
let wantSending = false; // the user pressed Start and not Stop: resume after a reconnect

const signaling = new Signaling({ onMessage, onState: setState, token: tokenFromUrl() });
keepInvite(); // the header's links keep this page's invite

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

async function start() {
  wantSending = true;
  startButton.disabled = true;
  if (!window.isSecureContext || !navigator.mediaDevices) {
    setState("error", explainMicError(new Error("insecure")));
    startButton.disabled = false;
    wantSending = false;
    return;
  }
  try {
    if (!micStream) {
      setState("permission", "Asking for the microphone…");
      micStream = await navigator.mediaDevices.getUserMedia(constraintsFrom(signaling.welcome));
    }
  } catch (error) {
    setState("error", explainMicError(error));
    startButton.disabled = false;
    wantSending = false;
    return;
  }
  await negotiate();
}

async function negotiate() {
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
  const channel = $("channel").value.trim();
  if (channel) request.channel = channel;
  signaling.send(request);
  stopButton.disabled = false;
}

function closePeer() {
  if (pc) pc.close();
  pc = null;
  $("ice").textContent = "—";
}

function stop() {
  wantSending = false;
  signaling.send({ type: "stop" });
  closePeer();
  if (micStream) for (const track of micStream.getTracks()) track.stop();
  micStream = null;
  meter.reset();
  startButton.disabled = false;
  stopButton.disabled = true;
  $("stream-id").textContent = "—";
  setState("idle", "Stopped. Press Start to speak again.");
}

async function onMessage(message) {
  switch (message.type) {
    case "available_streams":
      for (const c of message.channels || []) labels.set(c.channel, c.label);
      $("channel-list").replaceChildren(
        ...(message.channels || []).map((c) => new Option(c.label, c.channel)),
      );
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
        setState("idle", "Ready. Press Start to speak.");
        startButton.disabled = false;
      }
      break;
    case "answer":
      if (pc) await pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
      break;
    case "stream_started":
      $("stream-id").textContent = message.stream_id;
      setState("sending", `You are on air${channelLabel(message.stream_id)}. Everyone listening hears you.`);
      break;
    case "stream_ended":
      console.info(`relay: stream ended: ${message.reason}`);
      setState("ended", endedWords(message.reason));
      closePeer();
      startButton.disabled = false;
      break;
    case "visualization":
      meter.show(message.rms, message.peak);
      break;
    case "error":
      console.info(`relay: server said: ${message.message}`);
      setState("error", errorWords(message.message));
      closePeer();
      startButton.disabled = false;
      break;
    default:
      break;
  }
}

startButton.addEventListener("click", start);
stopButton.addEventListener("click", stop);
window.addEventListener("pagehide", () => signaling.close());
window.relaySender = { signaling, get pc() { return pc; } };
signaling.connect();

// `/send?channel=english` preselects a channel.
$("channel").value = new URLSearchParams(location.search).get("channel") || "";
