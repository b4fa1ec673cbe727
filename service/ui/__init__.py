"""The live view and the API docs, served by the service itself from files inside this package, so
that they work without the internet (docs/ui.md).

* ``GET /`` redirects to ``/ui/``: the live view, plain ES modules and ``<canvas>`` in ``static/``,
  nothing to build;
* ``GET /docs`` (Swagger UI) and ``GET /redoc`` (ReDoc), whose bundles are vendored, gzipped, in
  ``vendor/`` by ``python -m service.ui.vendor`` and served from ``/ui/vendor/``.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

HERE = Path(__file__).parent
STATIC = HERE / "static"
VENDOR = HERE / "vendor"
MANIFEST = VENDOR / "manifest.json"  # {"assets": {name: "package@version"}, ...}: written by service.ui.vendor

_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png"}

router = APIRouter(include_in_schema=False)


@cache
def vendored() -> dict[str, str]:
    return json.loads(MANIFEST.read_text())["assets"]


@cache
def _asset(name: str) -> bytes:
    return (VENDOR / f"{name}.gz").read_bytes()


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


@router.get("/")
async def index(request: Request) -> RedirectResponse:
    return RedirectResponse(f"{_root(request)}/ui/")


@router.get("/ui/vendor/{name}")
async def vendor_asset(name: str, request: Request) -> Response:
    """A vendored bundle: stored gzipped, sent as is to clients that accept gzip (every browser)."""
    if name not in vendored():
        raise HTTPException(404, detail={"code": "not_found", "message": f"no vendored asset {name!r}"})
    data = _asset(name)
    headers = {"Cache-Control": "public, max-age=86400", "Vary": "Accept-Encoding"}
    media = _TYPES.get(Path(name).suffix, "application/octet-stream")
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(data, media_type=media, headers={**headers, "Content-Encoding": "gzip"})
    return Response(gzip.decompress(data), media_type=media, headers=headers)


def install(app: FastAPI) -> None:
    """Add the live view and the offline docs to ``app`` (made with ``docs_url=None, redoc_url=None``)."""
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title}: API",
            swagger_js_url=f"{root}/ui/vendor/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/ui/vendor/swagger-ui.css",
            swagger_favicon_url=f"{root}/ui/vendor/favicon-32x32.png",
            # no badge from the online validator: the page must not call out
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title}: API",
            redoc_js_url=f"{root}/ui/vendor/redoc.standalone.js",
            redoc_favicon_url=f"{root}/ui/vendor/favicon-32x32.png",
            with_google_fonts=False,
        )

    app.include_router(router)
    app.mount("/ui", StaticFiles(directory=STATIC, html=True), name="ui")  # after /ui/vendor: routes match in order
