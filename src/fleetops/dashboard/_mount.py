"""Routes that serve the dashboard: the page, our static files and the chart library."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: Where ``make`` installs uPlot's npm package: a gitignored folder at the repository's
#: root. An installed (non-editable) fleetops has no such folder and draws SVG charts.
CHART_LIBRARY_DIR = (
    Path(__file__).resolve().parents[3] / ".dashboard-deps" / "node_modules" / "uplot" / "dist"
)

# The only files of the package the page loads, and their media types.
_CHART_LIBRARY_FILES = {
    "uPlot.esm.js": "text/javascript",
    "uPlot.min.css": "text/css",
}

# The page and our modules change with every release: let the browser revalidate them.
_NO_CACHE = {"Cache-Control": "no-cache"}


class _RevalidatedFiles(StaticFiles):
    """Static files the browser must revalidate (cheaply, by ETag) before reusing."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(_NO_CACHE)
        return response


def mount_dashboard(app: FastAPI, *, chart_library_dir: Path | None = None) -> None:
    """Serve the dashboard at ``/`` and its files under ``/static/``.

    ``chart_library_dir`` is the ``dist`` folder of the ``uplot`` npm package (default
    :data:`CHART_LIBRARY_DIR`); when its files are missing the page falls back to its
    own SVG charts.
    """
    library = chart_library_dir if chart_library_dir is not None else CHART_LIBRARY_DIR
    index = STATIC_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers=_NO_CACHE)

    @app.get("/static/vendor/uplot/{name}", include_in_schema=False)
    async def chart_library(name: str) -> FileResponse:
        media_type = _CHART_LIBRARY_FILES.get(name)
        path = library / name
        if media_type is None or not path.is_file():
            raise HTTPException(status_code=404, detail=f"{name} is not installed")
        return FileResponse(path, media_type=media_type)

    app.mount(
        "/static",
        _RevalidatedFiles(directory=STATIC_DIR, check_dir=True),
        name="dashboard-static",
    )
