"""The web page at GET / (app/web: plain HTML, CSS and JavaScript; no build step, nothing fetched elsewhere), and
the API documentation at /docs (Swagger UI) and /redoc (ReDoc), served from this origin too.

Static, so never behind the API key: the page asks for the key and sends it with the API calls it makes. Its
files are package data (pyproject.toml), so a wheel and the Docker image carry them. The Content-Security-Policy
allows only this origin's scripts and styles: the page runs no inline code and loads nothing from elsewhere.

FastAPI's own /docs and /redoc load Swagger UI, ReDoc, a favicon and fonts from CDNs, so they are blank offline
(and break that promise); ours are FastAPI's documented self-hosting recipe, with the files that the
`fastapi-standalone-docs` package ships (its ReDoc build asks for its logo at /redoc/logo-mini.svg, not a CDN), and
no web fonts. Their CSP allows this origin only (and the inline start-up script FastAPI's HTML carries).
"""

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

__all__ = ["DOCS_ASSETS_URL", "WEB_DIR", "page"]

WEB_DIR = Path(__file__).parent / "web"
DOCS_DIR = Path(str(files("fastapi_standalone_docs") / "static"))
DOCS_ASSETS_URL = "/docs-assets"
DOCS_ASSETS = {  # name → (file in DOCS_DIR, media type)
    "swagger-ui-bundle.js": ("swagger/swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": ("swagger/swagger-ui.css", "text/css"),
    "redoc.standalone.js": ("redoc/redoc.standalone.js", "text/javascript"),
    "logo-mini.svg": ("redoc/logo-mini.svg", "image/svg+xml"),
    "favicon.png": ("fastapi/favicon.png", "image/png"),
}
DOCS_HEADERS = {  # ReDoc runs a worker from a blob: URL; both draw icons from data: URLs
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
                               "'unsafe-inline'; img-src 'self' data:; worker-src 'self' blob:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}  # what index.html loads; nothing else is served
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",  # revalidate (ETag): a new release's page is never mixed with an old script
}

page = APIRouter(include_in_schema=False)


@page.get("/")
async def index() -> FileResponse:
    """The page: upload or place, see before/after, the curves and a live strength slider."""
    return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=SECURITY_HEADERS)


@page.get("/web/{name}")
async def asset(name: str) -> FileResponse:
    """The page's script and style sheet."""
    if name not in ASSETS:
        raise HTTPException(404)
    return FileResponse(WEB_DIR / name, media_type=ASSETS[name], headers=SECURITY_HEADERS)


@page.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI: the operations, tried from the browser."""
    root = request.scope.get("root_path", "")
    html = get_swagger_ui_html(openapi_url=root + request.app.openapi_url, title=f"{request.app.title} - Swagger UI",
                               swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
                               swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
                               swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png", oauth2_redirect_url=None)
    return HTMLResponse(html.body, headers=DOCS_HEADERS)


@page.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc: the same schema as one reference page."""
    root = request.scope.get("root_path", "")
    html = get_redoc_html(openapi_url=root + request.app.openapi_url, title=f"{request.app.title} - ReDoc",
                          redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
                          redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png", with_google_fonts=False)
    return HTMLResponse(html.body, headers=DOCS_HEADERS)


@page.get(DOCS_ASSETS_URL + "/{name}")
@page.get("/redoc/{name}")  # ReDoc's own logo, which its script asks for beside the page
async def docs_asset(name: str) -> FileResponse:
    """Swagger UI's and ReDoc's script and style files, ReDoc's logo and the favicon."""
    if name not in DOCS_ASSETS:
        raise HTTPException(404)
    path, media_type = DOCS_ASSETS[name]
    return FileResponse(DOCS_DIR / path, media_type=media_type, headers={"Cache-Control": "max-age=86400"})
