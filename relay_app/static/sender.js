// Sender page: microphone -> WebRTC -> relay.
import { LevelMeter, Signaling, gatheringComplete, newPeerConnection, stateReporter, tokenFromUrl } from "./relay.js";

const $ = (id) => document.getElementById(id);
const setState = stateReporter($("status"));
const meter = new LevelMeter($("level"), $("level-text"));
const startButton = $("start");
const stopButton = $("stop");

let pc = null;
let micStream = null;
let wantSending = false; // the user pressed Start and not Stop: resume after a reconnect

const signaling = new Signaling({ onMessage, onState: setState, token: tokenFromUrl() });

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
    return "The microphone needs a secure page: open this page over HTTPS (see docs: TLS for LAN phones) or on localhost.";
  }
  if (error.name === "NotAllowedError") return "Microphone permission was denied. Allow it in the browser's site settings and press Start again.";
  if (error.name === "NotFoundError") return "No microphone was found.";
  if (error.name === "NotReadableError") return "The microphone is in use by another program.";
  return `Cannot open the microphone: ${error.message || error.name}`;
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
    if (pc && pc.connectionState === "failed") setState("error", "Audio connection failed (ICE). Check that this device and the server are on the same network.");
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
  setState("idle", "Stopped. Press Start to speak.");
}

async function onMessage(message) {
  switch (message.type) {
    case "available_streams":
      $("channel-list").replaceChildren(
        ...(message.channels || []).map((c) => new Option(c.label, c.channel)),
      );
      break;
    case "welcome":
      $("connection-id").textContent = message.connection_id;
      signaling.send({ type: "get_available_streams" }); // the configured channels
      if (wantSending && micStream) {
        await negotiate(); // the socket came back: send again
      } else {
        setState("idle", "Connected. Press Start to speak.");
        startButton.disabled = false;
      }
      break;
    case "answer":
      if (pc) await pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
      break;
    case "stream_started":
      $("stream-id").textContent = message.stream_id;
      setState("sending", `Sending as ${message.stream_id}`);
      break;
    case "stream_ended":
      setState("ended", `The server ended this stream (${message.reason}); press Start to send again.`);
      closePeer();
      startButton.disabled = false;
      break;
    case "visualization":
      meter.show(message.rms, message.peak);
      break;
    case "error":
      setState("error", `Server: ${message.message}`);
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
