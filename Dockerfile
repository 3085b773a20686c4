# relay_app: LAN voice relay. Build: docker build -t webrtc-voice-backend .
# Run:   docker run -d --name voice-streaming --network host webrtc-voice-backend
#   or:  docker run -d --name voice-streaming -p 8080:8080 -p 8081:8081 \
#          -p 40000-40100:40000-40100/udp webrtc-voice-backend
#   or, every peer on one UDP port (webrtc.udp_port instead of the range):
#          docker run -d --name voice-streaming -p 8080:8080 -p 8081:8081 -p 3478:3478/udp \
#          -e RELAY_WEBRTC__UDP_PORT_RANGE=null -e RELAY_WEBRTC__UDP_PORT=3478 \
#          -e RELAY_WEBRTC__ANNOUNCED_ADDRESS=<the host's LAN IP> webrtc-voice-backend
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Media only on this port range, so `-p 40000-40100:40000-40100/udp` is enough. One port
    # per peer connection: 101 ports, more than the default limits use (widen it with them).
    # Or one port for every peer: RELAY_WEBRTC__UDP_PORT=3478 with this set to null, and
    # `-p 3478:3478/udp` (EXPOSE below names the range; publishing is what counts).
    RELAY_WEBRTC__UDP_PORT_RANGE="[40000, 40100]"

WORKDIR /app

# curl, so the guide's `docker exec voice-streaming curl -s localhost:8080/health` works in the
# container (about 1 MB with --no-install-recommends; the apt lists are removed again).
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl=7.88.1-10+deb12u* \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first (cached while only the code changes), pinned by the lock file.
COPY constraints.txt pyproject.toml README.md ./
COPY relay_app ./relay_app
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --create-home --uid 10001 relay

COPY hypercorn.toml ./

USER 10001
EXPOSE 8080/tcp 8081/tcp 40000-40100/udp

# The guide's health check; urlopen raises (exit 1) on a 503 "unhealthy" too.
HEALTHCHECK --interval=30s --timeout=30s --start-period=120s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:8080/health', timeout=25)"]

CMD ["hypercorn", "-c", "hypercorn.toml", "relay_app.asgi:app"]
