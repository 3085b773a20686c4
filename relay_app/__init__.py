"""relay_app: a LAN voice relay. WebRTC senders, relayed to many receivers.

The package is layered (docs/architecture.md): core, webrtc, audio, client, streams, media,
cluster, signaling, endpoints, server, tools; each imports only the layers below it.
"""

__version__ = "0.1.0"
