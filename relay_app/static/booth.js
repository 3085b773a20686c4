// The booth's ear on the Speak page: what an interpreter hears in their headphones (the floor
// while they speak, the partner they will take over from while they wait). It is an ordinary
// listener on a WebSocket session of its own: the server fans out to it as to anyone else.
import { Signaling, gatheringComplete, newPeerConnection } from "./relay.js";

const RETRY_MS = 2000; // a channel nobody speaks on yet: ask again

export class BoothEar {
  /**
   * `audio`: the element that plays; `say(text)`: a line for the person; `labelOf(channel)`:
   * what people call a channel.
   */
  constructor({ token, audio, say, labelOf }) {
    this.token = token;
    this.audio = audio;
    this.say = say;
    this.labelOf = labelOf;
    this.channel = null;
    this.signaling = null;
    this.pc = null;
    this.remoteStream = null;
    this.retryTimer = null;
  }

  /** Hear `channel` (null: nothing). Nothing changes when it already does. */
  listen(channel) {
    if (channel === this.channel) return;
    this.channel = channel;
    clearTimeout(this.retryTimer);
    this.closePeer();
    if (!channel) {
      if (this.signaling) this.signaling.close();
      this.signaling = null;
      this.say("");
      return;
    }
    if (!this.signaling) {
      this.signaling = new Signaling({
        token: this.token,
        onMessage: (message) => this.onMessage(message),
        onState: (state) => {
          if (state === "disconnected") this.closePeer();
        },
      });
      this.signaling.connect(); // (its welcome asks for the channel)
    } else {
      this.signaling.send({ type: "stop" });
      this.request();
    }
  }

  request() {
    clearTimeout(this.retryTimer);
    if (this.channel && this.signaling) this.signaling.send({ type: "start_receiving", stream_id: this.channel });
  }

  closePeer() {
    if (this.pc) this.pc.close();
    this.pc = null;
    this.remoteStream = null;
    this.audio.srcObject = null;
  }

  async onMessage(message) {
    const name = this.labelOf(this.channel);
    switch (message.type) {
      case "welcome":
        this.request();
        break;
      case "offer": {
        this.closePeer();
        const pc = (this.pc = newPeerConnection(this.signaling.welcome));
        pc.ontrack = (event) => {
          this.remoteStream = event.streams[0] || new MediaStream([event.track]);
          this.audio.srcObject = this.remoteStream;
          this.audio.play().catch((error) => console.info(`relay: booth audio: ${error.name}`));
          this.say(`You hear ${name}.`);
        };
        await pc.setRemoteDescription({ type: "offer", sdp: message.sdp });
        await pc.setLocalDescription(await pc.createAnswer());
        await gatheringComplete(pc);
        if (this.pc === pc) this.signaling.send({ type: "answer", sdp: pc.localDescription.sdp });
        break;
      }
      case "stream_started":
        this.say(`You hear ${name}.`);
        break;
      case "stream_ended":
      case "speaker_lost":
        this.say(message.message || `Nobody is speaking on ${name} now.`);
        if (message.type === "stream_ended" && !message.waiting) this.retrySoon();
        break;
      case "speaker_back":
        this.say(`You hear ${name}.`);
        break;
      case "error":
        console.info(`relay: booth: server said: ${message.message}`);
        if (message.message.includes("No audio stream")) {
          this.say(`Nobody is speaking on ${name} yet.`);
        } else {
          this.say(`${name} cannot be heard here.`);
        }
        this.retrySoon();
        break;
      default:
        break;
    }
  }

  retrySoon() {
    this.closePeer();
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.request(), RETRY_MS);
  }
}
