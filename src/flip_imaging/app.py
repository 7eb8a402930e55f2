"""The web application: every router of every sub-package, mounted on one FastAPI app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from flip_imaging import __version__
from flip_imaging.context import AppContext

log = logging.getLogger(__name__)


def _routers() -> list:
    """Import routers lazily so that a sub-package's import cost is paid only by the app."""
    from flip_imaging.auth.routes import router as auth_router
    from flip_imaging.containers.routes import router as containers_router
    from flip_imaging.events.routes import router as events_router
    from flip_imaging.intake.routes import router as dicom_router
    from flip_imaging.web.routes import router as web_router
    from flip_imaging.xnat_api.routes import router as xnat_router

    return [auth_router, xnat_router, dicom_router, events_router, containers_router, web_router]


def create_app(ctx: AppContext, *, start_services: bool = True) -> FastAPI:
    """Build the app around ``ctx``; background services start and stop with the app's lifespan."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if start_services:
            ctx.start_services()
        try:
            yield
        finally:
            if start_services:
                ctx.stop_services()

    app = FastAPI(title="flip-imaging", version=__version__, lifespan=lifespan, docs_url="/xapi/docs",
                  openapi_url="/xapi/openapi.json", redoc_url=None)
    app.state.ctx = ctx

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):  # type: ignore[no-untyped-def]
        # XNAT clients treat HTML bodies as errors and show text bodies to users: answer in plain text.
        headers = getattr(exc, "headers", None)
        return PlainTextResponse(str(exc.detail), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):  # type: ignore[no-untyped-def]
        return JSONResponse({"detail": exc.errors()}, status_code=400)

    for router in _routers():
        app.include_router(router)
    return app
