"""The web app's server: aiohttp in the bot process, started and stopped with the adapters.

It reads the store through a read-only connection of its own, so a slow gallery query never
holds up the bot's reads, and writes (a rating, a sign-in, a version switch) only through the
service and the store's own transactions. The guard below runs before every page: it finds
who is signed in, turns away everyone else, checks every form's CSRF token, and adds the
headers that keep pages private.
"""

from __future__ import annotations

import hmac
import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from bot.config import Settings, split_host_port
from bot.service import Service
from bot.store import Reader, open_reader
from bot.web import pages
from bot.web.auth import Viewer
from bot.web.pages import ADMIN, VIEWER

log = logging.getLogger(__name__)

COOKIE = "canvas_session"
OPEN_ROUTES = {"signin", "signin_link", "signin_use", "static", "metrics"}
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # The sign-in page's address holds its token: never sent on to another site.
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; "
                               "style-src 'self' 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


class QuietAccessLogger(AbstractAccessLogger):
    """One line a request, by route: a sign-in link's token never reaches the log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        try:
            name = getattr(request.match_info.route, "name", None)
        except (AttributeError, AssertionError):  # a request the parser refused: no route
            name = None
        path = request.path
        if name in ("signin_link", "signin_use") or "signin/" in path:
            path = f"<{name or 'signin'}>"
        self.logger.info("%s %s %s %.0f ms", request.method, path[:200], response.status,
                         time * 1000)


def is_admin(service: Service, viewer: Viewer | None) -> bool:
    return viewer is not None and service.is_admin(viewer.user)


@web.middleware
async def guard(request: web.Request, handler: pages.Handler) -> web.StreamResponse:
    service: Service = request.app[pages.SERVICE]
    viewer = None
    session = request.cookies.get(COOKIE, "")
    if session:
        viewer = await service.sign_ins.viewer(session)
    request[VIEWER] = viewer
    request[ADMIN] = is_admin(service, viewer)
    route = getattr(request.match_info.route, "name", None)
    try:
        if viewer is None and route not in OPEN_ROUTES and route is not None:
            if request.method == "GET":
                raise web.HTTPSeeOther("/signin")
            raise web.HTTPUnauthorized(text="Please sign in: send /web to the bot.")
        if request.method == "POST":
            if request.headers.get("Sec-Fetch-Site") == "cross-site":
                # Another site's form: not even a sign-in (it could sign you in as someone
                # else); ours always come from this site.
                raise web.HTTPForbidden(text="Forms from other sites are not accepted here.")
            if route not in OPEN_ROUTES:
                await _check_csrf(request, viewer)
        response = await handler(request)
    except web.HTTPException as answer:
        if answer.status < 400:  # a redirect
            _private(answer)
            raise
        response = pages.error_page(request, answer.status, answer.text or answer.reason)
    except Exception:
        log.exception("web: could not answer %s %s", request.method,
                      getattr(request.match_info.route, "name", None))
        response = pages.error_page(request, 500, "Sorry, something went wrong on our side.")
    return _private(response)


async def _check_csrf(request: web.Request, viewer: Viewer | None) -> None:
    try:
        form = await request.post()
    except (ValueError, LookupError, HttpProcessingError):  # a body that is not a form
        raise web.HTTPBadRequest(text="That was not a form this site sends.") from None
    sent = str(form.get("csrf", "")).encode(errors="surrogateescape")
    if viewer is None or not hmac.compare_digest(sent, viewer.csrf.encode()):
        raise web.HTTPForbidden(text="This form has expired; please reload the page and try "
                                     "again.")


def _private(response: web.StreamResponse) -> web.StreamResponse:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def make_app(service: Service, settings: Settings, reader: Reader) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    pages.install(app, service, settings, reader)
    return app


class WebServer:
    """The component `canvas run` starts and stops; off when web.listen is empty."""

    def __init__(self, service: Service, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.runner: web.AppRunner | None = None
        self.reader: Reader | None = None

    async def start(self) -> None:
        listen = self.settings.web.listen
        if not listen:
            return
        host, port = split_host_port(listen)
        self.reader = await open_reader(self.settings.storage.db)
        runner = web.AppRunner(make_app(self.service, self.settings, self.reader),
                               access_log_class=QuietAccessLogger, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as error:
            # A web server that cannot listen must not stop the chat bot.
            log.warning("web: cannot listen on %s (%s); the web gallery is off. Set web.listen "
                        "to a free host:port, or empty to turn it off.", listen,
                        error.strerror or error)
            await runner.cleanup()
            await self.reader.close()
            self.reader = None
            return
        self.runner = runner
        self.service.web_running = True
        if host in ("0.0.0.0", "::") and not self.settings.web.public_url:
            log.warning("web: listening on every address, but web.public_url is empty: the "
                        "links /web sends point to %s, which only this machine can open",
                        self.settings.web.base_url)
        log.info("web: the gallery is at %s (send /web in a chat for a sign-in link)",
                 self.settings.web.base_url)

    async def stop(self) -> None:
        self.service.web_running = False
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.reader is not None:
            await self.reader.close()
            self.reader = None
