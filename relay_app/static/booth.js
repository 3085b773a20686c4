// The booth's ear on the Speak page: what an interpreter hears in their headphones (the floor
// while they speak, the partner they will take over from while they wait). It is an ordinary
// listener on a WebSocket session of its own: the server fans out to it as to anyone else.
import { Signaling, gatheringComplete, newPeerConnection } from "./relay.js";

const LOOK_MS = 2000; // how often a channel nobody speaks on is looked at again

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
    this.asked = false; // a start_receiving is out (or playing): no second one
    this.remoteStream = null;
    this.lookTimer = null;
  }

  /** Hear `channel` (null: nothing). Nothing changes when it already does. */
  listen(channel) {
    if (channel === this.channel) return;
    this.channel = channel;
    clearTimeout(this.lookTimer);
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
      this.signaling.connect(); // (its welcome looks at the channel)
    } else {
      this.signaling.send({ type: "stop" });
      this.look();
    }
  }

  // Whether the channel is live is read from the listing, so that a quiet channel costs no
  // refused start_receiving (and no error on the server) every few seconds.
  look() {
    clearTimeout(this.lookTimer);
    if (this.channel && this.signaling) this.signaling.send({ type: "get_available_streams" });
  }

  lookSoon() {
    clearTimeout(this.lookTimer);
    this.lookTimer = setTimeout(() => this.look(), LOOK_MS);
  }

  closePeer() {
    if (this.pc) this.pc.close();
    this.pc = null;
    this.asked = false;
    this.remoteStream = null;
    this.audio.srcObject = null;
  }

  async onMessage(message) {
    const name = this.labelOf(this.channel);
    switch (message.type) {
      case "welcome":
        this.look();
        break;
      case "available_streams": {
        if (this.asked || !this.channel) break;
        const channel = (message.channels || []).find((c) => c.channel === this.channel);
        if (channel && channel.live) {
          this.asked = true;
          this.signaling.send({ type: "start_receiving", stream_id: this.channel });
        } else {
          this.say(`Nobody is speaking on ${name} yet.`);
          this.lookSoon();
        }
        break;
      }
      case "offer": {
        if (this.pc) this.pc.close();
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
      case "speaker_back":
        this.say(`You hear ${name}.`);
        break;
      case "stream_ended":
        this.say(message.message || `Nobody is speaking on ${name} now.`);
        if (!message.waiting) {
          // (not a channel's pause: the server let this listener go) look again
          this.closePeer();
          this.lookSoon();
        }
        break;
      case "speaker_lost":
        this.say(message.message);
        break;
      case "error":
        console.info(`relay: booth: server said: ${message.message}`);
        this.say(message.message.includes("No audio stream") ? `Nobody is speaking on ${name} yet.` : `${name} cannot be heard here.`);
        this.closePeer();
        this.lookSoon();
        break;
      default:
        break;
    }
  }
}
