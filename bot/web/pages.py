"""The pages everyone signed in sees: sign-in, the gallery, an image and its files.

Every picture is found by its id through bot/web/gallery.py, which answers only for images
the viewer may see; a path from a request never reaches the disk.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web
from PIL import Image

from bot import commands as cmd
from bot.config import Settings
from bot.service import Service, User
from bot.store import Reader
from bot.web import gallery
from bot.web.auth import LinkRefused, Viewer
from bot.web.thumbs import thumbnail
from engine.blobs import BlobMissing

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SERVICE = web.AppKey("service", Service)
SETTINGS = web.AppKey("settings", Settings)
READER = web.AppKey("reader", Reader)
TEMPLATES = web.AppKey("templates", jinja2.Environment)
VIEWER = web.RequestKey("viewer", Viewer | None)  # set by the guard (bot/web/app.py)
ADMIN = web.RequestKey("admin", bool)
HERE = Path(__file__).parent
MAX_ID = 2**62
SECURE_COOKIE_SCHEMES = ("https://",)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def _number(value: float | None, form: str = "{:.4f}") -> str:
    """A figure that may be missing (a run that diverged has no final loss)."""
    return "—" if value is None else form.format(value)


def templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["when"] = _when
    env.filters["seconds"] = _seconds
    env.filters["number"] = _number
    env.globals["kinds"] = gallery.KINDS
    return env


def render(request: web.Request, template: str, status: int = 200,
           **context: Any) -> web.Response:
    viewer = request.get(VIEWER)
    page = request.app[TEMPLATES].get_template(template).render(
        viewer=viewer, admin=request.get(ADMIN, False),
        csrf=viewer.csrf if viewer else "", **context)
    return web.Response(text=page, content_type="text/html", status=status)


def error_page(request: web.Request, status: int, text: str) -> web.Response:
    return render(request, "error.html", status=status, status_code=status, message=text)


def scope_of(request: web.Request) -> gallery.Scope:
    viewer = request[VIEWER]
    assert viewer is not None  # the guard lets no one else through
    return gallery.Scope(viewer.user_id, request[ADMIN])


def image_id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not re.fullmatch(r"[0-9]{1,19}", text) or int(text) > MAX_ID:
        raise web.HTTPNotFound(text="There is no such picture.")
    return int(text)


# ---- sign-in -------------------------------------------------------------------------------


async def signin(request: web.Request) -> web.Response:
    if request.get(VIEWER):
        raise web.HTTPSeeOther("/")
    return render(request, "signin.html", refused=None, token=None)


async def signin_link(request: web.Request) -> web.Response:
    """The link from chat shows a button, and only pressing it signs in: a link preview or a
    virus scanner that fetches the link does not use it up."""
    token = request.match_info["token"]
    try:
        await request.app[SERVICE].sign_ins.check_link(token)
    except LinkRefused as refused:
        return render(request, "signin.html", status=410, refused=str(refused), token=None)
    return render(request, "signin.html", refused=None, token=token)


async def signin_use(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    try:
        session = await service.sign_ins.redeem(request.match_info["token"])
    except LinkRefused as refused:
        return render(request, "signin.html", status=410, refused=str(refused), token=None)
    response = web.Response(status=303, headers={"Location": "/"})
    secure = request.secure or request.app[SETTINGS].web.public_url.startswith(
        SECURE_COOKIE_SCHEMES)
    response.set_cookie("canvas_session", session, httponly=True, samesite="Lax",
                        secure=secure, max_age=30 * 24 * 3600, path="/")
    return response


async def signout(request: web.Request) -> web.Response:
    await request.app[SERVICE].sign_ins.end(request.cookies.get("canvas_session", ""))
    response = web.Response(status=303, headers={"Location": "/signin"})
    response.del_cookie("canvas_session", path="/")
    return response


# ---- the gallery and an image --------------------------------------------------------------


async def gallery_page(request: web.Request) -> web.Response:
    scope = scope_of(request)
    filters = gallery.Filters.parse(request.query)
    db = request.app[READER]
    found = await gallery.tiles(db, scope, filters, limit=gallery.PAGE_SIZE + 1)
    tiles, more = found[:gallery.PAGE_SIZE], len(found) > gallery.PAGE_SIZE
    older = "?" + urlencode(filters.query(before=tiles[-1].id)) if more else None
    first = "?" + urlencode(filters.query(before=None)) if filters.before else None
    return render(request, "gallery.html", tiles=tiles, filters=filters, older=older,
                  newest=first, choices=await gallery.choices(db, scope),
                  models=request.app[SERVICE].models.names)


async def image_page(request: web.Request) -> web.Response:
    found = await gallery.picture(request.app[READER], scope_of(request), image_id(request))
    if found is None:
        raise web.HTTPNotFound(text="There is no such picture, or it is not yours to see.")
    return render(request, "image.html", picture=found)


async def rate(request: web.Request) -> web.Response:
    number = image_id(request)
    if await gallery.image_blob(request.app[READER], scope_of(request), number) is None:
        raise web.HTTPNotFound(text="There is no such picture, or it is not yours to see.")
    form = await request.post()
    score = str(form.get("score", ""))
    if score not in ("1", "2", "3", "4", "5"):
        raise web.HTTPBadRequest(text="A rating is a whole number from 1 to 5.")
    rating = cmd.Rate(number, int(score))  # the same action as /rate in a chat
    reply = await request.app[SERVICE].handle(user_of(request), rating)
    if reply.error:
        raise web.HTTPBadRequest(text=reply.text)
    raise web.HTTPSeeOther(f"/image/{number}")


def user_of(request: web.Request) -> User:
    """The signed-in viewer as the service knows users."""
    viewer = request[VIEWER]
    assert viewer is not None
    return viewer.user


async def _file_of(request: web.Request) -> Path:
    blob = await gallery.image_blob(request.app[READER], scope_of(request), image_id(request))
    if blob is None:
        raise web.HTTPNotFound(text="There is no such picture, or it is not yours to see.")
    try:
        path = request.app[SERVICE].blobs.path(blob)
    except BlobMissing:  # an image an older version stored without its file
        path = None
    if path is None or not path.is_file():
        raise web.HTTPNotFound(text="This picture's file is missing on the server.")
    return path


async def picture_file(request: web.Request) -> web.StreamResponse:
    response = web.FileResponse(await _file_of(request))
    response.headers["Cache-Control"] = "private, max-age=86400"
    response.content_type = "image/png"
    return response


async def download(request: web.Request) -> web.StreamResponse:
    response = web.FileResponse(await _file_of(request))
    response.content_type = "image/png"
    response.headers["Content-Disposition"] = (
        f'attachment; filename="canvas-{image_id(request)}.png"')
    return response


async def thumb(request: web.Request) -> web.StreamResponse:
    source = await _file_of(request)
    cache = request.app[SETTINGS].storage.images / "thumbs"
    try:
        path = await asyncio.to_thread(thumbnail, source, cache, source.stem)
    except (OSError, ValueError, Image.DecompressionBombError):  # a file that is no picture
        raise web.HTTPNotFound(text="This picture's file cannot be read.") from None
    response = web.FileResponse(path)
    response.content_type = "image/webp"
    response.headers["Cache-Control"] = "private, max-age=86400"
    return response


async def style(request: web.Request) -> web.Response:
    return web.Response(text=(HERE / "static" / "style.css").read_text(),
                        content_type="text/css",
                        headers={"Cache-Control": "public, max-age=3600"})


def install(app: web.Application, service: Service, settings: Settings,
            reader: Reader) -> None:
    from bot.web import admin  # the admins' pages, which build on these

    app[SERVICE], app[SETTINGS], app[READER] = service, settings, reader
    app[TEMPLATES] = templates()
    app[TEMPLATES].globals["today"] = lambda: dt.date.today().isoformat()
    routes = [
        web.get("/signin", signin, name="signin"),
        web.get("/signin/{token}", signin_link, name="signin_link"),
        web.post("/signin/{token}", signin_use, name="signin_use"),
        web.post("/signout", signout, name="signout"),
        web.get("/", gallery_page, name="gallery"),
        web.get("/image/{id}", image_page, name="image"),
        web.post("/image/{id}/rate", rate, name="rate"),
        web.get("/image/{id}/picture.png", picture_file, name="picture"),
        web.get("/image/{id}/download", download, name="download"),
        web.get("/image/{id}/thumb.webp", thumb, name="thumb"),
        web.get("/static/style.css", style, name="static"),
        *admin.routes(),
    ]
    app.add_routes(routes)
