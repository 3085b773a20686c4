// Third-party WHEP players, bundled by .ci/run (esbuild) from their pinned npm packages into
// test-output/npm/players.js, which tests/browser/test_third_party_players.py loads in Chromium.
import { WebRTCPlayer } from "@eyevinn/webrtc-player";
import { WHEPClient } from "whip-whep/whep.js";

window.WebRTCPlayer = WebRTCPlayer;
window.WHEPClient = WHEPClient;
