import pytest
from tests.console import Browser
from tests.gateway import Gateway, ALL_AI, RECORD

async def test_smoke(gateway: Gateway) -> None:
    t = await gateway.tenant("acme", {**RECORD, "ai": ALL_AI})
    b = Browser(gateway.client)
    r = await b.sign_in(t.admin)
    print(r.headers["Location"], b.cookies)
    for p in ["/console/", "/console/recordings", "/console/instructions", "/console/holds", "/console/erasure?number=%2B40711111111", "/console/audit", "/console/tenants/acme/tokens"]:
        r, text = await b.get(p)
        print(p, r.status, r.headers.get("Location"), len(text))
        if r.status >= 400: print(text[:2000])
    o = Browser(gateway.client)
    await o.sign_in(gateway.operator)
    for p in ["/console/tenants", "/console/tenants/acme", "/console/tenants/acme/delete", "/console/operator/tokens"]:
        r, text = await o.get(p)
        print(p, r.status, len(text))
        if r.status >= 400: print(text[:2000])
