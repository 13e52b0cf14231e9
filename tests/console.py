"""A browser's side of the console for the functional tier: cookies kept and sent by hand
(as a browser keeps them: name and value, sent back on ``/console/`` paths), forms read
from the pages, CSRF tokens taken from them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


@dataclass
class Browser:
    """One browser: its cookie jar and the CSRF token of the last page it read."""

    client: TestClient
    cookies: dict[str, str] = field(default_factory=dict)
    set_cookies: list[SimpleCookie] = field(default_factory=list)
    csrf: str | None = None

    def _headers(self) -> dict[str, str]:
        jar = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return {"Cookie": jar} if jar else {}

    def _keep(self, response: ClientResponse) -> None:
        for header in response.headers.getall("Set-Cookie", []):
            cookie: SimpleCookie = SimpleCookie()
            cookie.load(header)
            self.set_cookies.append(cookie)
            for name, morsel in cookie.items():
                if morsel["max-age"] == "0" or morsel.value == "":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value

    async def get(self, path: str, **kwargs: Any) -> tuple[ClientResponse, str]:
        response = await self.client.get(
            path, headers=self._headers(), allow_redirects=False, **kwargs
        )
        return response, await self._read(response)

    async def _read(self, response: ClientResponse) -> str:
        """The page's text (a WAV's is empty), keeping its cookies and its CSRF token."""
        self._keep(response)
        if response.content_type != "text/html":
            await response.read()
            return ""
        text = await response.text()
        if found := CSRF.search(text):
            self.csrf = found.group(1)
        return text

    async def post(
        self, path: str, data: dict[str, Any], *, csrf: bool = True
    ) -> tuple[ClientResponse, str]:
        form = dict(data)
        if csrf:
            assert self.csrf is not None, "no page with a form was read"
            form["csrf"] = self.csrf
        response = await self.client.post(
            path, data=form, headers=self._headers(), allow_redirects=False
        )
        return response, await self._read(response)

    async def sign_in(self, token: str) -> ClientResponse:
        await self.get("/console/sign-in")
        response, _ = await self.post("/console/sign-in", {"token": token})
        assert response.status == 303, await response.text()
        return response
