"""Engine.IO protocol 3 on the wire, as the original's clients speak it: the polling framing
(``b64=1`` too), the client's pings, JSONP refused; and the payload codec's edge cases. The
clients themselves (socket.io-client 1.7 and 2.5) are in test_js_client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from engineio import packet as eio_packet

from socketio_webservice.transport.socketio_adapter.legacy import decode_payload, encode_payload
from socketio_webservice.webservice.config import load_config
from tests.harness import Harness


def frames(payload: str) -> list[str]:
    """Protocol 3 framing, read as a 2.x client reads it."""
    out = []
    while payload:
        length, _, rest = payload.partition(":")
        out.append(rest[: int(length)])
        payload = rest[int(length) :]
    return out


async def test_polling_handshake_pings_and_events_in_protocol_3_framing(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    assert harness.http is not None
    base = f"{harness.url}/socket.io/?EIO=3&transport=polling&b64=1&token=t1&deviceId=old"
    async with harness.http.get(base) as response:
        assert response.status == 200
        (opened,) = frames(await response.text())
    handshake = json.loads(opened[1:])
    assert opened[0] == "0" and handshake["upgrades"] == ["websocket"]
    assert handshake["pingInterval"] == 25000
    session = f"{base}&sid={handshake['sid']}"

    async def post(*packets: str) -> None:
        body = "".join(f"{len(p)}:{p}" for p in packets)
        async with harness.http.post(session, data=body) as response:  # type: ignore[union-attr]
            assert (response.status, await response.text()) == (200, "OK")

    async def poll() -> list[str]:
        async with harness.http.get(session) as response:  # type: ignore[union-attr]
            return frames(await response.text())

    await post("2", "40/shop?token=t1&deviceId=old,")  # the client pings, then joins
    received = await poll()
    assert received[0] == "3"  # the server answers the ping with a pong
    while len(received) < 3:  # the namespace accepted as protocol 4 says it, then _settings
        received += await poll()
    assert received[1] == "40/shop"
    assert received[2].startswith('42/shop,["_settings"')
    await harness.send("shop", ["user_1"], "n", "Zoë 🚀")
    (event,) = await poll()
    assert event.isascii()  # escaped, so 1.x (UTF-8 bytes) and 2.x (characters) agree
    assert json.loads(event[event.index("[") :])[1] == "Zoë 🚀"


async def test_jsonp_polling_is_a_clear_400(harness: Harness) -> None:
    await harness.start()
    assert harness.http is not None
    async with harness.http.get(f"{harness.url}/socket.io/?EIO=3&transport=polling&j=0") as r:
        assert r.status == 400 and "JSONP" in await r.text()


def test_payload_codec_counts_utf16_units_and_refuses_broken_frames() -> None:
    packets = decode_payload("6:3probe6:4é🚀xy2:40")
    assert [(p.packet_type, p.data) for p in packets] == [(3, "probe"), (4, "é🚀xy"), (4, "0")]
    encoded = encode_payload([eio_packet.Packet(eio_packet.MESSAGE, data='2/s,["é🚀"]')])
    assert encoded == '27:42/s,["\\u00e9\\ud83d\\ude80"]'
    for broken in ["x:4", "9:4ab", "2:4", "1:", "3:4" + "\ud83d"]:
        with pytest.raises(ValueError):
            decode_payload(broken)


def test_serve_client_can_be_turned_off(tmp_path: Path) -> None:
    directory = tmp_path
    (directory / "config.yml").write_text("production:\n  io:\n    serveClient: false\n")
    (directory / "sites.yml").write_text("s:\n  authUrl: http://a/b\n  apiKey: k\n")
    config = load_config({}, str(directory / "config.yml"), str(directory / "sites.yml"))
    assert config.serve_client is False
    assert "serveClient" not in config.socketio_options
