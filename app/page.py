"""The web page at GET / (app/web: plain HTML, CSS and JavaScript; no build step, nothing fetched elsewhere).

Static, so never behind the API key: the page asks for the key and sends it with the API calls it makes. Its
files are package data (pyproject.toml), so a wheel and the Docker image carry them. The Content-Security-Policy
allows only this origin's scripts and styles: the page runs no inline code and loads nothing from elsewhere.
"""

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

__all__ = ["WEB_DIR", "page"]

WEB_DIR = Path(__file__).parent / "web"
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
