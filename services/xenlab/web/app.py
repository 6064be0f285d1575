"""`xenlab web`: a page on localhost with the running lab's topology, live
per-link rates, the FDB, domain states and events, updated as they happen.

An aiohttp application, a thin adapter over what the lab already serves:
- ``/api/topology``: the graph (lab/topology.py's Cytoscape elements), the
  domains and the bridge ports, as ``xenlab status`` gathers them;
- ``/api/fdb``: every bridge's forwarding database;
- ``/api/events``: the lab's gRPC Events streams (lab/stream.py) as
  Server-Sent Events, one JSON object per message (topic, retained,
  payload): the current states first, then what happens. The page's rates
  are the bridge's ``port.stats`` rates, its domain states ``domain.state``,
  its FDB follows ``fdb.event``; a port without carrier (``port.state``) and
  a vif's ring set down on either side (``vif.link``) are drawn down. A browser's EventSource reconnects by
  itself when the stream ends (a bridge service restarted);
- ``/api/capture?bridge=B&port=P&seconds=S``: a capture at a bridge port,
  streamed as a pcap download while it runs (the bridge's Capture stream,
  as `xenlab capture B:P`).

The page acts as Domain-0 (it reads the rundir's secret), so it is not open
to whoever reaches the port: every request needs the token ``xenlab web``
prints, in the URL once (``/?token=...``, which sets a same-site, HttpOnly
cookie) or as that cookie. It listens on 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from pathlib import Path

import grpc
from aiohttp import web

from xenlab import eventloop
from xenlab.bridge.client import BridgeClient
from xenlab.bridge.client import NoBridgeError, bridge_for
from xenlab.client import HypervisorClient
from xenlab.lab import topology, view
from xenlab.lab.stream import StreamError, lab_events
from xenlab.net.capture import PcapWriter
from xenlab.proto import bridge_pb2
from xenlab.rundir import Rundir

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "xenlab-web-token"
MAX_CAPTURE_SECONDS = 300.0
DEFAULT_CAPTURE_SECONDS = 5.0
MAX_CAPTURE_FRAMES = 1_000_000
KEEPALIVE = 15.0                 # seconds between SSE comments on a quiet stream

TOKEN_KEY = web.AppKey("token", str)
RUNDIR_KEY = web.AppKey("rundir", Rundir)
HV_KEY = web.AppKey("hv", HypervisorClient)


def _authorized(request: web.Request) -> bool:
    token = request.app[TOKEN_KEY]
    given = request.query.get("token") or request.cookies.get(COOKIE) or ""
    return hmac.compare_digest(given.encode(), token.encode())


@web.middleware
async def require_token(request: web.Request, handler):
    # The page's code is public; the lab's data is not.
    if request.path.startswith("/static/") or _authorized(request):
        response = await handler(request)
        if request.query.get("token") and not response.prepared:
            response.set_cookie(COOKIE, request.app[TOKEN_KEY], httponly=True, samesite="Strict")
        return response
    raise web.HTTPUnauthorized(text="xenlab web: open the URL `xenlab web` printed (it carries "
                                    "the token)\n")


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


def run_state(flags: str) -> str:
    """xl list's state column (r, b, p, s, c, d) as the events name it
    (domain.state): paused, shutdown, crashed, dying, else running."""
    for flag, state in (("d", "dying"), ("c", "crashed"), ("s", "shutdown"), ("p", "paused")):
        if flag in flags:
            return state
    return "running"


async def api_topology(request: web.Request) -> web.Response:
    run = request.app[RUNDIR_KEY]
    try:
        lab_view = await view.gather(run)
    except grpc.aio.AioRpcError as err:
        raise web.HTTPServiceUnavailable(text=f"cannot ask the lab's services: {err.details()}")
    state = run.read_state() or {}
    domains = [{**d, "state": run_state(d["state"])} for d in lab_view.domains]
    topo = topology.build(domains, lab_view.bridges, lab_view.qdiscs)
    return web.json_response({
        "lab": state.get("name", ""),
        "elements": topology.to_cytoscape(topo),
        "domains": [{k: d[k] for k in ("domid", "name", "state")} for d in domains],
        "ports": [{"bridge": br["name"], **{k: p[k] for k in ("name", "state", "carrier", "link")}}
                  for br in lab_view.bridges for p in br["ports"]],
    })


async def api_fdb(request: web.Request) -> web.Response:
    entries = []
    async with await BridgeClient.connect(request.app[HV_KEY]) as bridges:
        for name in bridges.names:
            table = await bridges.stub(name).ShowFdb(bridge_pb2.ShowFdbRequest(bridge=name),
                                                     timeout=10)
            entries += [{"bridge": e.bridge or name, "mac": e.mac, "port": e.port, "vlan": e.vlan,
                         "static": e.static, "state": e.state} for e in table.entries]
    return web.json_response({"entries": entries})


async def api_events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store"})
    await response.prepare(request)
    stream = lab_events(request.app[HV_KEY])
    pending = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(stream))
            done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE)
            if not done:
                await response.write(b": keepalive\n\n")
                continue
            event, pending = pending.result(), None
            payload = json.loads(event.payload) if event.payload else None
            data = json.dumps({"topic": event.topic, "retained": event.retained,
                               "payload": payload}, separators=(",", ":"))
            await response.write(f"data: {data}\n\n".encode())
    except StreamError as err:
        log.info("event stream ended: %s", err.message)
        await response.write(f"event: ended\ndata: {json.dumps(err.message)}\n\n".encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass                        # the browser went away
    finally:
        if pending is not None:
            pending.cancel()
        await stream.aclose()
    return response


def _capture_args(request: web.Request) -> tuple[str, str, float]:
    bridge, port = request.query.get("bridge", ""), request.query.get("port", "")
    if not bridge or not port:
        raise web.HTTPBadRequest(text="capture: name the bridge and the port (?bridge=B&port=P)")
    try:
        seconds = float(request.query.get("seconds", DEFAULT_CAPTURE_SECONDS))
    except ValueError:
        seconds = -1
    if not 0 < seconds <= MAX_CAPTURE_SECONDS:
        raise web.HTTPBadRequest(text=f"capture: seconds must be in (0, {MAX_CAPTURE_SECONDS:g}]")
    return bridge, port, seconds


async def api_capture(request: web.Request) -> web.StreamResponse:
    bridge, port, seconds = _capture_args(request)
    try:
        client = await bridge_for(request.app[HV_KEY], bridge)
    except NoBridgeError as err:
        raise web.HTTPNotFound(text=f"capture at {bridge}:{port}: {err}")
    call = client.Capture(bridge_pb2.BridgeCaptureRequest(bridge=bridge, port=port,
                                                          count=MAX_CAPTURE_FRAMES))
    try:
        try:
            await call.initial_metadata()       # the tap is in place, or the call failed
            if call.done() and await call.code() != grpc.StatusCode.OK:
                raise web.HTTPNotFound(text=f"capture at {bridge}:{port}: {await call.details()}")
        except grpc.aio.AioRpcError as err:
            raise web.HTTPNotFound(text=f"capture at {bridge}:{port}: {err.details()}")
        name = f"{bridge}-{port}.pcap".replace("/", "_").replace('"', "_")
        response = web.StreamResponse(headers={
            "Content-Type": "application/vnd.tcpdump.pcap",
            "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})
        await response.prepare(request)
        out = _ResponseBuffer()
        writer = PcapWriter(out)

        async def copy() -> None:
            async for frame in call:
                writer.write(frame.data, frame.timestamp)
                await response.write(out.take())

        await response.write(out.take())
        try:
            await eventloop.wait_for(copy(), seconds)
        except asyncio.TimeoutError:
            pass
        except grpc.aio.AioRpcError as err:
            log.info("capture at %s:%s ended: %s", bridge, port, err.details())
        await response.write_eof()
        return response
    finally:
        call.cancel()
        await client.close()


class _ResponseBuffer:
    """What PcapWriter writes, taken out in pieces for the response."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._chunks.append(bytes(data))

    def take(self) -> bytes:
        data, self._chunks = b"".join(self._chunks), []
        return data


async def _connect(app: web.Application) -> None:
    run = app[RUNDIR_KEY]
    app[HV_KEY] = HypervisorClient.connect(run.read_address(), 0, run.read_dom0_secret())


async def _close(app: web.Application) -> None:
    await app[HV_KEY].close()


def make_app(rundir: Path, token: str | None = None) -> web.Application:
    """The application for the lab in `rundir`; `token`: the one requests
    must carry (a fresh random one when None)."""
    app = web.Application(middlewares=[require_token])
    app[TOKEN_KEY] = token or secrets.token_urlsafe(24)
    app[RUNDIR_KEY] = Rundir(rundir)
    app.on_startup.append(_connect)
    app.on_cleanup.append(_close)
    app.router.add_get("/", index)
    app.router.add_get("/api/topology", api_topology)
    app.router.add_get("/api/fdb", api_fdb)
    app.router.add_get("/api/events", api_events)
    app.router.add_get("/api/capture", api_capture)
    app.router.add_static("/static/", STATIC)
    return app
