"""The dashboard's web layer: a Starlette app serving ``views`` as HTML pages and JSON twins.

Every page ``/X`` has a twin ``/X.json`` returning the dict the page was rendered from; the
page's script polls the twin every ``poll_seconds`` and updates itself in place. The app holds
no logic of its own: ``create_app(store)`` wires routes to ``edgefleet.deploy.dashboard.views``
and ``edgefleet.deploy.metrics``. Handlers are plain functions, which Starlette runs in a thread
pool, so the store's blocking SQLite calls never stall the event loop (the store serialises them).

Routes::

    /                          redirect to /devices
    /devices[.json]            the fleet table, a page at a time: ?offset=&limit= (0: all), filtered by
                               ?label=KEY=VALUE (repeatable), ?status=, ?profile=, ?group=
    /devices/{id}[.json]       one device: charts over time, recent deployment events
    /models[.json]             latest benchmark per device, grouped by model and package
    /rollouts[.json]           every rollout with per-wave progress
    /rollouts/{id}[.json]      one rollout: gates, waves, a page of its devices (?offset=&limit=)
    /metrics                   Prometheus text format
    /static/...                the stylesheet and the script (no CDN: the files ship in the package)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from edgefleet.agent.labels import parse_labels
from edgefleet.deploy.dashboard import views
from edgefleet.deploy.metrics import CONTENT_TYPE, render_metrics
from edgefleet.deploy.registry import STATUSES, DeviceFilter
from edgefleet.deploy.store import TelemetryStore
from edgefleet.deploy.tables import format_number

HERE = Path(__file__).resolve().parent
DEFAULT_POLL_SECONDS = 3.0

View = Callable[[Request], dict[str, Any]]


def format_value(value: Any, kind: str = "text") -> str:
    """A cell as the pages show it; ``static/dashboard.js`` has the same rules for live updates."""
    if value is None or value == "":
        return "-"
    if kind == "num":
        return format_number(float(value)) or "-"
    if kind == "bool":
        return "yes" if value else "no"
    if kind == "time":
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(value)))
    if kind == "pct":
        return f"{float(value) * 100:.0f}%"
    if kind == "counts":  # a count per key: {"done": 3, "failed": 1} -> "done 3, failed 1"
        return ", ".join(f"{k} {n}" for k, n in value.items()) or "-"
    if kind == "labels":  # {"site": "a", "floor": "2"} -> "floor=2 site=a"
        return " ".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
    return str(value)


def _paging(request: Request) -> dict[str, int]:
    """``?offset=&limit=`` as ints; HTTP 400 naming the parameter when one is not a whole number >= 0."""
    paging = {"offset": 0, "limit": views.PAGE_SIZE}
    for name in paging:
        raw = request.query_params.get(name)
        if raw is None:
            continue
        if not raw.isdigit():
            raise HTTPException(400, f"?{name}= must be a whole number >= 0, not {raw!r}")
        paging[name] = int(raw)
    return paging


def _with_query(request: Request, changes: dict[str, Any]) -> str:
    """This page's URL with some query parameters replaced (the pager's links keep the filter)."""
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in changes]
    return f"{request.url.path}?{urlencode(kept + [(k, str(v)) for k, v in changes.items()])}"


def _device_filter(request: Request) -> DeviceFilter:
    """``?label=KEY=VALUE`` (repeatable), ``?status=``, ``?profile=``, ``?group=``; HTTP 400 saying what is wrong."""
    q = request.query_params
    status = q.get("status")
    if status is not None and status not in STATUSES:
        raise HTTPException(400, f"?status= must be one of {', '.join(STATUSES)}, not {status!r}")
    try:
        labels = parse_labels(q.getlist("label"))
    except ValueError as exc:
        raise HTTPException(400, f"?label=: {exc}") from None
    return DeviceFilter(profile=q.get("profile"), group=q.get("group"), status=status, labels=labels)


def create_app(
    store: TelemetryStore,
    *,
    clock: Callable[[], float] = time.time,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
) -> Starlette:
    """The dashboard over ``store``; ``clock`` is injectable so tests can pin "now"."""
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.filters["fmt"] = format_value

    def found(data: dict[str, Any] | None, what: str) -> dict[str, Any]:
        if data is None:
            raise HTTPException(404, f"no {what} in {store.path}")
        return data

    pages: dict[str, tuple[str, View]] = {
        "devices": ("devices.html", lambda r: views.fleet_view(store, now=clock(), where=_device_filter(r),
                                                                 **_paging(r))),
        "device": ("device.html", lambda r: found(
            views.device_view(store, r.path_params["device_id"], now=clock()), f"device {r.path_params['device_id']!r}")),
        "models": ("models.html", lambda r: views.models_view(store)),
        "rollouts": ("rollouts.html", lambda r: views.rollouts_view(store)),
        "rollout": ("rollout.html", lambda r: found(
            views.rollout_view(store, r.path_params["rollout_id"], **_paging(r)),
            f"rollout {r.path_params['rollout_id']!r}")),
    }

    def html(name: str) -> Callable[[Request], Response]:
        template, view = pages[name]

        def endpoint(request: Request) -> Response:
            data = view(request)
            query = f"?{request.url.query}" if request.url.query else ""
            json_url = request.url.path.rstrip("/") + ".json" + query
            body = env.get_template(template).render(
                data=data, page=name, json_url=json_url, poll_ms=int(poll_seconds * 1000),
                page_url=lambda **changes: _with_query(request, changes),
                static=lambda path: request.url_for("static", path=path).path,
            )
            return HTMLResponse(body)

        return endpoint

    def as_json(name: str) -> Callable[[Request], Response]:
        _, view = pages[name]

        def endpoint(request: Request) -> Response:
            return JSONResponse(view(request), headers={"Cache-Control": "no-store"})

        return endpoint

    def metrics(request: Request) -> Response:
        return Response(render_metrics(store), media_type=CONTENT_TYPE)

    def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path.endswith(".json"):
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        return HTMLResponse(env.get_template("error.html").render(
            message=exc.detail, page="", json_url=request.url.path, poll_ms=0,
            static=lambda path: request.url_for("static", path=path).path), status_code=exc.status_code)

    def home(request: Request) -> Response:
        return RedirectResponse("/devices")

    routes = [
        Route("/", home),
        Route("/devices.json", as_json("devices")),
        Route("/devices", html("devices")),
        Route("/devices/{device_id}.json", as_json("device")),
        Route("/devices/{device_id}", html("device")),
        Route("/models.json", as_json("models")),
        Route("/models", html("models")),
        Route("/rollouts.json", as_json("rollouts")),
        Route("/rollouts", html("rollouts")),
        Route("/rollouts/{rollout_id}.json", as_json("rollout")),
        Route("/rollouts/{rollout_id}", html("rollout")),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_found})
