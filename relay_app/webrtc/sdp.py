"""Opus in our SDP, beyond what aiortc writes: codecs cut to Opus, Opus's own parameters, RED.

aiortc's Opus codec carries no parameters, so its offers and answers say nothing of in-band FEC
(RFC 7587 `useinbandfec`): a browser sending to an answer without it never adds the Opus FEC
that lets a listener's decoder rebuild a lost packet from the next one, and that is most of
what makes speech survive Wi-Fi loss. Nor does aiortc know RED (RFC 2198, red.py), which
browsers offer next to Opus. These rewrite the text we send; aiortc's own state is untouched:
the parameters only ask the other side's encoder for something, and RED packets are read and
written by relay_app itself (the RTP tap and the fast path), never by aiortc.
"""

from __future__ import annotations

# What we ask of an Opus sender: 10 ms frames allowed (minptime, what browsers offer), and FEC.
OPUS_PARAMETERS = {"minptime": "10", "useinbandfec": "1"}
# What a remote may say about stereo, kept in our answer when it said it.
STEREO = ("stereo", "sprop-stereo")
RED = "red/48000/2"
OUR_RED_PAYLOAD_TYPE = 63  # what browsers use; in our offers only when it is free


def opus_only(sdp: str) -> str:
    """The offer with its audio section down to Opus (and RED over it): the answer then lists
    Opus only (what forward mode sends), not G722, PCMU and PCMA after it."""
    lines, keep, red, in_audio = sdp.splitlines(), set[str](), set[str](), False
    for line in lines:
        if line.startswith("m="):
            in_audio = line.startswith("m=audio")
        elif in_audio and line.lower().startswith("a=rtpmap:") and "opus/48000" in line.lower():
            keep.add(line.split(":", 1)[1].split()[0])
        elif in_audio and line.lower().startswith("a=rtpmap:") and line.lower().endswith(RED):
            red.add(line.split(":", 1)[1].split()[0])  # RED over Opus: ours to read or write
    if not keep:
        return sdp  # no Opus at all: refused below, with the reason
    keep |= red
    out, in_audio = [], False
    for line in lines:
        if line.startswith("m="):
            in_audio = line.startswith("m=audio")
            if in_audio:
                fields = line.split()
                line = " ".join(fields[:3] + [pt for pt in fields[3:] if pt in keep])
        elif in_audio and _codec_line(line) and line.split(":", 1)[1].split()[0] not in keep:
            continue
        out.append(line)
    return "\r\n".join(out) + "\r\n"


def _codec_line(line: str) -> bool:
    return line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"))


def opus_payload_types(sdp: str) -> set[str]:
    return {
        line.split(":", 1)[1].split()[0]
        for line in sdp.splitlines()
        if line.lower().startswith("a=rtpmap:") and "opus/48000" in line.lower()
    }


def opus_parameters(sdp: str) -> dict[str, str]:
    """The Opus fmtp parameters an SDP states (the first Opus payload type's)."""
    types = opus_payload_types(sdp)
    for line in sdp.splitlines():
        if line.startswith("a=fmtp:") and line.split(":", 1)[1].split()[0] in types:
            text = line.split(None, 1)[1] if " " in line else ""
            return dict(p.split("=", 1) for p in text.split(";") if "=" in p)
    return {}


def with_opus_fec(sdp: str, remote: str | None = None) -> str:
    """Our SDP with each Opus payload type's fmtp asking for in-band FEC (and keeping the
    stereo parameters `remote`, the other side's description, stated)."""
    types = opus_payload_types(sdp)
    if not types:
        return sdp
    wanted = dict(OPUS_PARAMETERS)
    if remote is not None:
        theirs = opus_parameters(remote)
        wanted.update({key: theirs[key] for key in STEREO if key in theirs})
    lines = sdp.splitlines()
    has_fmtp = {line.split(":", 1)[1].split()[0] for line in lines if line.startswith("a=fmtp:")}

    def fmtp(pt: str, ours: dict[str, str]) -> str:
        return f"a=fmtp:{pt} " + ";".join(f"{k}={v}" for k, v in {**ours, **wanted}.items())

    out: list[str] = []
    for line in lines:
        pt = line.split(":", 1)[1].split()[0] if line.startswith(("a=fmtp:", "a=rtpmap:")) else ""
        if line.startswith("a=fmtp:") and pt in types:
            line = fmtp(pt, opus_parameters(f"a=rtpmap:{pt} opus/48000/2\r\n{line}"))
        out.append(line)
        if line.startswith("a=rtpmap:") and pt in types and pt not in has_fmtp:
            out.append(fmtp(pt, {}))
    return "\r\n".join(out) + "\r\n"


def red_payload_type(sdp: str) -> int | None:
    """The payload type an SDP gives RED for Opus, or None."""
    for line in sdp.splitlines():
        if line.lower().startswith("a=rtpmap:") and line.lower().endswith(RED):
            return int(line.split(":", 1)[1].split()[0])
    return None


def negotiated_red(local: str, remote: str | None) -> int | None:
    """RED's payload type when both descriptions carry it (under the same number), else None."""
    ours = red_payload_type(local)
    return (
        ours
        if ours is not None and remote is not None and red_payload_type(remote) == ours
        else None
    )


def with_red(sdp: str, remote: str | None = None) -> str:
    """Our SDP with RED over Opus added: in an answer (`remote` is the offer) only when the
    offer has it, under its number, listed first (a browser sends RED only when the answer
    prefers it); in an offer (`remote` None) under OUR_RED_PAYLOAD_TYPE, after Opus."""
    opus = sorted(opus_payload_types(sdp))
    if not opus or red_payload_type(sdp) is not None:
        return sdp
    if remote is None:
        red, first = OUR_RED_PAYLOAD_TYPE, False
        if any(line.startswith(f"a=rtpmap:{red} ") for line in sdp.splitlines()):
            return sdp
    else:
        theirs = red_payload_type(remote)
        if theirs is None:
            return sdp
        red, first = theirs, True
    out: list[str] = []
    in_audio, last_codec_line = False, -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            in_audio = line.startswith("m=audio")
            if in_audio:
                fields = line.split()
                types = [str(red), *fields[3:]] if first else [*fields[3:], str(red)]
                line = " ".join(fields[:3] + types)
        out.append(line)
        if in_audio and _codec_line(line):
            last_codec_line = len(out)
    out[last_codec_line:last_codec_line] = [
        f"a=rtpmap:{red} {RED}",
        f"a=fmtp:{red} {opus[0]}/{opus[0]}",
    ]
    return "\r\n".join(out) + "\r\n"
