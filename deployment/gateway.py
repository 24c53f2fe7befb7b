"""The one public port of the server: Flower's Fleet API and nothing else, over TLS.

Flower 1.42's SuperLink serves its Fleet (`/v1/fleet/...`), Control (`/v1/control/...`: register node keys, start
runs with any app bundle) and Runtime APIs on one host:port, and the Control API checks no account unless OIDC is
configured. So the SuperLink listens on 127.0.0.1 (or its private container network) only, and this gateway is what
the nodes dial: it terminates TLS with the server's certificate, forwards `POST /v1/fleet/<call>` and `GET /health`
to the SuperLink (TLS, verified against the CA) unchanged, headers included (node authentication signs a timestamp
header, which passes through), and answers every other path with 404 without reaching the SuperLink.

    python -m deployment.gateway --listen 0.0.0.0:9092 --upstream 127.0.0.1:8000 \
        --ssl-certfile tls/server.pem --ssl-keyfile tls/server.key --ssl-ca-certfile tls/ca.pem
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import ssl
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.applications import Starlette

FLEET_PREFIX = "/v1/fleet/"
HEALTH_PATH = "/health"
HOP_HEADERS = frozenset({"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                         "proxy-authorization", "proxy-authenticate", "content-length"})
UPSTREAM_TIMEOUT = 300.0  # pulls of large arrays on slow links; the SuperNode's own timeouts are shorter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayConfig:
    """Where the gateway listens, where the SuperLink is, and the TLS files for both sides."""

    listen_host: str
    listen_port: int
    upstream: str  # host:port of the SuperLink's HTTP API
    certfile: Path
    keyfile: Path
    ca_certfile: Path
    upstream_server_name: str = ""  # the name the SuperLink's certificate is checked against (default: its host)


def allowed(method: str, path: str) -> bool:
    """Only the Fleet API's calls (POST) and the health probe (GET) pass."""
    if method == "POST" and path.startswith(FLEET_PREFIX):
        rest = path[len(FLEET_PREFIX):]
        return bool(rest) and "/" not in rest and ".." not in rest
    return method == "GET" and path == HEALTH_PATH


def create_app(cfg: GatewayConfig) -> Starlette:
    """The ASGI app: allowed requests forwarded to the SuperLink, everything else 404 (never forwarded)."""
    import httpx
    from starlette.applications import Starlette  # noqa: F811 - imported here so `--help` stays fast
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    context = ssl.create_default_context(cafile=str(cfg.ca_certfile))
    host = cfg.upstream.rsplit(":", 1)[0]
    client = httpx.AsyncClient(base_url=f"https://{cfg.upstream}", verify=context, timeout=UPSTREAM_TIMEOUT,
                               headers={"host": cfg.upstream_server_name or host})

    async def forward(request: Request) -> Response:
        if not allowed(request.method, request.url.path):
            log.warning("refused %s %s from %s", request.method, request.url.path,
                        request.client.host if request.client else "?")
            return Response("not found\n", status_code=404, media_type="text/plain")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        try:
            upstream = await client.request(request.method, request.url.path, content=await request.body(),
                                            headers=headers)
        except httpx.HTTPError as exc:
            log.error("SuperLink unreachable at %s: %s", cfg.upstream, exc)
            return Response("SuperLink unavailable\n", status_code=503, media_type="text/plain")
        out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS
               and k.lower() != "content-encoding"}
        return Response(upstream.content, status_code=upstream.status_code, headers=out)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deployment.gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", type=_address, required=True, help="HOST:PORT the nodes dial (the public address)")
    p.add_argument("--upstream", required=True, help="HOST:PORT of the SuperLink (never public)")
    p.add_argument("--upstream-server-name", default="", help="name in the SuperLink's certificate (default: host)")
    p.add_argument("--ssl-certfile", type=Path, required=True, help="the server certificate (server.pem)")
    p.add_argument("--ssl-keyfile", type=Path, required=True, help="its private key (server.key)")
    p.add_argument("--ssl-ca-certfile", type=Path, required=True, help="the CA the SuperLink's certificate is from")
    return p


def config_from_args(argv: Sequence[str]) -> GatewayConfig:
    args = parser().parse_args(list(argv))
    _address(args.upstream)
    for path in (args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certfile):
        if not path.is_file():
            raise SystemExit(f"gateway: {path} does not exist")
    return GatewayConfig(args.listen[0], args.listen[1], args.upstream, args.ssl_certfile, args.ssl_keyfile,
                         args.ssl_ca_certfile, args.upstream_server_name)


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    cfg = config_from_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per forwarded call otherwise
    log.info("Fleet API only on %s:%d -> %s", cfg.listen_host, cfg.listen_port, cfg.upstream)
    uvicorn.run(create_app(cfg), host=cfg.listen_host, port=cfg.listen_port, ssl_certfile=str(cfg.certfile),
                ssl_keyfile=str(cfg.keyfile), log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
