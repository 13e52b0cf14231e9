"""The HTTP control API of ../shared/API.md: tenants, tokens, instructions, calls,
recordings, legal holds, data subjects' rights and the audit log. Each module holds the
handlers of one resource; ``routes`` declares every route once, and ``add_routes`` mounts
them behind the checks it derives from that table."""

from __future__ import annotations

from gateway.api.routes import ROUTES, add_routes

__all__ = ["ROUTES", "add_routes"]
