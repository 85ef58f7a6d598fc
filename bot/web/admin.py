"""The admins' pages: the models and their versions, the status, and /metrics.

A version switch here is the chat's `/model use`, sent through the service as the signed-in
admin, so both ways do the same thing and answer the same way.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from yarl import URL

from bot import commands as cmd
from bot.learning_store import LearningStore, RunRow, VersionRow
from bot.service import Service
from bot.web import figures
from bot.web.charts import Series, line_chart
from bot.web.pages import ADMIN, READER, SERVICE, SETTINGS, render, user_of

PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP", "X-Forwarded-Host")
LOCAL_NAMES = ("127.0.0.1", "::1", "localhost")
CHART_POINTS = 1000  # a long run's loss is thinned to this many points


def _thinned(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= CHART_POINTS:
        return points
    step = len(points) / CHART_POINTS
    return [points[int(n * step)] for n in range(CHART_POINTS - 1)] + [points[-1]]


def _only_admins(request: web.Request) -> None:
    if not request[ADMIN]:
        raise web.HTTPForbidden(text="Only the bot's admins can see this page.")


@dataclass(frozen=True)
class Branch:
    version: VersionRow
    children: list[Branch]


@dataclass(frozen=True)
class Run:
    row: RunRow
    chart: Any


@dataclass(frozen=True)
class ModelView:
    name: str
    active: str
    tree: list[Branch]
    runs: list[Run]
    running: str  # the live status of a retraining of this model, if one runs


def _tree(versions: list[VersionRow]) -> list[Branch]:
    children: dict[int | None, list[VersionRow]] = {}
    ids = {version.id for version in versions}
    for version in versions:
        parent = version.parent_id if version.parent_id in ids else None
        children.setdefault(parent, []).append(version)

    def grow(version: VersionRow) -> Branch:
        return Branch(version, [grow(child) for child in children.get(version.id, [])])

    return [grow(root) for root in children.get(None, [])]


async def _model_view(service: Service, learning: LearningStore, db: Any,
                      name: str) -> ModelView:
    active = await learning.active_version(name)
    async with db.execute("SELECT id FROM training_runs WHERE base_model = ? ORDER BY id DESC"
                          " LIMIT 20", (name,)) as cursor:
        run_ids = [row[0] for row in await cursor.fetchall()]
    runs = []
    for run_id in run_ids:
        row = await learning.run(run_id)
        async with db.execute("SELECT step, loss FROM training_losses WHERE run_id = ?"
                              " ORDER BY step", (run_id,)) as cursor:
            points = [(float(step), float(loss)) for step, loss in await cursor.fetchall()]
        chart = line_chart([Series(row.version, _thinned(points))],
                           title=f"{row.version}: loss by step", x_label="step",
                           y_label="loss", empty="No steps recorded yet.")
        runs.append(Run(row, chart))
    running = ""
    current = service.learning.run_id
    if current is not None and any(run.row.id == current for run in runs):
        running = await service.learning.status_text(name)
    return ModelView(name, active.name if active else "base",
                     _tree(await learning.versions(name)), runs, running)


async def models_page(request: web.Request, said: str = "", status: int = 200
                      ) -> web.Response:
    _only_admins(request)
    service = request.app[SERVICE]
    learning = LearningStore(service.store)
    views = [await _model_view(service, learning, request.app[READER], name)
             for name in service.models.names]
    return render(request, "models.html", status=status, models=views, said=said,
                  running=any(view.running for view in views))


async def use_version(request: web.Request) -> web.Response:
    _only_admins(request)
    form = await request.post()
    model, version = str(form.get("model", "")), str(form.get("version", ""))
    service = request.app[SERVICE]
    if model not in service.models.names:
        raise web.HTTPBadRequest(text="There is no such model.")
    reply = await service.handle(user_of(request), cmd.ModelCmd("use", version, checkpoint=model))
    return await models_page(request, said=f"{model}: {reply.text}",
                             status=400 if reply.error else 200)


async def status_page(request: web.Request) -> web.Response:
    _only_admins(request)
    service = request.app[SERVICE]
    hour = await figures.last_hour(request.app[READER])
    made = line_chart([Series("images", hour.images_per_minute)],
                      title="Images per minute, last hour", x_is_time=True,
                      y_label="images", empty="No images in the last hour.")
    waits = line_chart([Series("p50", hour.wait_p50),
                        Series("p95", hour.wait_p95)],
                       title="Wait before generating (seconds), last hour", x_is_time=True,
                       y_label="seconds", empty="No jobs started in the last hour.")
    joiner = service.engines.joiner
    return render(request, "status.html", queue=figures.queue(service),
                  engines=figures.engines(service), hour=hour, made=made, waits=waits,
                  workers=joiner.workers_text() if joiner else "")


def _may_read_metrics(request: web.Request) -> bool:
    """The token, or a request from this host itself: straight to the listen address (not
    through a proxy on this host, which would make everyone look local)."""
    token = request.app[SETTINGS].web.metrics_token
    sent = request.headers.get("Authorization", "").encode(errors="surrogateescape")
    if token and hmac.compare_digest(sent, f"Bearer {token}".encode()):
        return True
    if any(name in request.headers for name in PROXY_HEADERS):
        return False
    try:
        host = URL(f"http://{request.host}").host
    except ValueError:
        return False
    if host not in LOCAL_NAMES:
        return False  # a request for a public name came through something in between
    transport = request.transport
    peer = (transport.get_extra_info("peername") or ("",))[0] if transport else ""
    own = (transport.get_extra_info("sockname") or ("",))[0] if transport else ""
    try:
        return ipaddress.ip_address(peer).is_loopback or peer == own
    except ValueError:
        return False


async def metrics(request: web.Request) -> web.Response:
    if not _may_read_metrics(request):
        raise web.HTTPForbidden(text="/metrics answers this host only, or a bearer token "
                                     "(web.metrics_token).")
    service = request.app[SERVICE]
    hour = await figures.last_hour(request.app[READER])
    queue = figures.queue(service)
    gauges = [
        ("canvas_jobs_waiting", "Jobs waiting for an engine",
         sum(1 for job in queue if job.percent is None)),
        ("canvas_jobs_running", "Jobs on an engine now",
         sum(1 for job in queue if job.percent is not None)),
        ("canvas_engines_online", "Engines and workers ready to serve", service.engines.online),
        ("canvas_images_last_hour", "Images made in the last hour", hour.images),
        ("canvas_images_per_minute", "Images a minute, averaged over the last hour",
         hour.images / 60),
    ]
    families = [GaugeMetricFamily(name, about, value=value) for name, about, value in gauges]
    wait = GaugeMetricFamily("canvas_wait_seconds", "Wait before generating, last hour",
                             labels=["quantile"])
    for quantile, value in (("0.5", hour.p50), ("0.95", hour.p95)):
        if value is not None:
            wait.add_metric([quantile], value)
    families.append(wait)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Once(families))
    return web.Response(body=generate_latest(registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


class _Once:
    """A collector for figures already read (the store is async; collect() is not)."""

    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> list[GaugeMetricFamily]:
        return self.families


def routes() -> list[web.RouteDef]:
    return [
        web.get("/models", models_page, name="models"),
        web.post("/models/use", use_version, name="use_version"),
        web.get("/status", status_page, name="status"),
        web.get("/metrics", metrics, name="metrics"),
    ]
