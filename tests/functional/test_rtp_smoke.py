from __future__ import annotations

import asyncio

from tests.gateway import ULAW, Gateway, bearer, read_wav, tone
from tests.rtp import RtpSender, UdpSender, offer_key

ON = {"recording": {"enabled": True}}


async def test_smoke(gateway: Gateway) -> None:
    acme = await gateway.tenant("acme", ON)
    announced = await gateway.announce(acme, transport="rtp", codec="pcmu")
    offer = announced["ingest"]["rtp"]
    print(offer["host"], offer["inbound"], offer["outbound"], offer["srtp"])
    inbound = ULAW.encode(tone(1.0, 440))
    outbound = ULAW.encode(tone(1.0, 660, seed=1))
    udp = UdpSender()
    a = RtpSender(0, offer_key(offer, "inbound"), ssrc=1)
    b = RtpSender(0, offer_key(offer, "outbound"), ssrc=2, seq=65530)
    pa, pb = a.stream(inbound), b.stream(outbound)
    for x, y in zip(pa, pb):
        udp.send(x, offer["inbound"])
        udp.send(y, offer["outbound"])
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.1)
    r = await gateway.client.post(f"/v1/calls/{announced['call_id']}/end", headers=bearer(acme.pbx))
    assert r.status == 200, await r.text()
    r = await gateway.client.get(f"/v1/recordings/{announced['recording_id']}/audio", headers=bearer(acme.admin))
    assert r.status == 200, await r.text()
    channels, rate, pcm = read_wav(await r.read())
    print(channels, rate, pcm.shape)
    m = await (await gateway.client.get("/metrics")).text()
    print([line for line in m.splitlines() if "rtp" in line and not line.startswith("#")])
    udp.close()
    left = ULAW.decode(inbound)
    assert pcm.shape[0] >= 7900
    assert (pcm[: len(left), 0] == left[: pcm.shape[0]]).mean() > 0.95
