"""The real route table of a FastAPI app: (method, path, endpoint) for every API route.

FastAPI 0.16x keeps included routers as `_IncludedRouter` entries (no flat `app.routes` list of
APIRoutes any more), so this walks them, adding each include's prefix. Tests use it to check
rules over *every* route (auth, the architecture table) instead of a hand-kept list."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi.routing import APIRoute


def api_routes(routes, prefix: str = "") -> Iterator[tuple[str, str, object]]:
    for route in routes:
        if isinstance(route, APIRoute):
            for method in sorted(route.methods):
                yield method, prefix + route.path, route.endpoint
        elif hasattr(route, "original_router"):  # an included router
            yield from api_routes(route.original_router.routes, prefix + (route.include_context.prefix or ""))
