"""The operator's web console at ``/dashboard``: server-rendered pages (Jinja2), a little
plain JS that polls the console's JSON endpoints for live updates and draws SVG charts, and
a login with an admin key (signed session cookie, CSRF token on every form).

Everything it serves is in this package (templates/, static/): it works offline."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from aiprod.service.dashboard import actions, live, pages
from aiprod.service.dashboard.web import STATIC, install_handlers


def install_dashboard(app: FastAPI) -> None:
    install_handlers(app)
    app.include_router(pages.router)
    app.include_router(actions.router)
    app.include_router(live.router)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")
