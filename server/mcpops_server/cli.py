"""mcpops-server serve | check-config | migrate."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import ssl
import sys
from typing import Any

from . import __version__, systemd
from .config import ConfigError, Settings, default_config_path, describe, load_settings

# The seed's "TLS Configuration".
TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS"

EXIT_CONFIG = 2

logger = logging.getLogger("mcpops.server")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcpops-server", description="A production runtime for MCP servers."
    )
    parser.add_argument("--version", action="version", version=f"mcpops-server {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    cfg_help = "YAML configuration (default: $MCPOPS_CONFIG, then /etc/mcpops/config.yaml)"
    serve = commands.add_parser("serve", help="run one instance")
    serve.add_argument("--config", help=cfg_help)
    serve.add_argument("--port", type=int, help="override server.port")
    check = commands.add_parser("check-config", help="validate the configuration and exit")
    check.add_argument("--config", help=cfg_help)
    migrate = commands.add_parser("migrate", help="apply pending data migrations (idempotent)")
    migrate.add_argument("--config", help=cfg_help)
    return parser


def _load(args: argparse.Namespace, *, deep: bool) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "port", None) is not None:
        overrides["server.port"] = args.port
    settings = load_settings(args.config, overrides=overrides)
    if deep and settings.server.app:
        # Importing the user's package is part of validating the configuration.
        from .app import AppLoadError, load_user_app
        from .config import Problem

        try:
            load_user_app(settings.server.app)
        except AppLoadError as exc:
            raise ConfigError([Problem("server.app", settings.server.app, str(exc))]) from None
    return settings


def _fail(exc: ConfigError) -> int:
    for line in exc.lines():
        print(line, file=sys.stderr)
    return EXIT_CONFIG


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = _load(args, deep=True)
    except ConfigError as exc:
        return _fail(exc)
    path = settings.config_path or f"{default_config_path()[0]} (absent; environment and defaults)"
    print(f"config ok: {path}")
    for warning in settings.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not settings.auth.enabled:
        print("warning: auth.enabled is false; every client can call every tool", file=sys.stderr)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    try:
        settings = _load(args, deep=False)
    except ConfigError as exc:
        return _fail(exc)
    from .notes import NotesStore
    from .redisclient import redis_client

    async def run() -> tuple[int, bool]:
        redis = redis_client(settings)
        try:
            return await NotesStore(redis, settings.redis.key_prefix, settings.notes).migrate()
        finally:
            await redis.aclose()

    try:
        version, changed = asyncio.run(run())
    except Exception as exc:
        print(f"migrate: failed: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"schema_version={version} changed={'true' if changed else 'false'}")
    return 0


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    assert settings.tls.cert_file and settings.tls.key_file
    ctx.load_cert_chain(settings.tls.cert_file, settings.tls.key_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS_CIPHERS)
    return ctx


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = _load(args, deep=False)
    except ConfigError as exc:
        return _fail(exc)
    from . import logging as mlog

    mlog.configure(settings.logging, instance_id=settings.server.instance_id, server=settings.server.name)
    for warning in settings.warnings:
        logger.warning(warning, extra={"event": "config_warning"})
    if not settings.auth.enabled:
        logger.warning("auth is disabled (auth.enabled: false): every client can call every tool")

    import uvicorn

    from .app import AppLoadError, build_app
    from .connections import header_deadline_protocol
    from .sdk import end_sse_streams, keep_sse_streams_at_shutdown

    # The SDK streams responses with sse-starlette, which by default ends every SSE stream the moment
    # uvicorn sees SIGTERM, cutting tool calls off mid-flight. We drain instead: close the idle
    # notification streams at once, let calls in flight finish, and end what is left shortly before
    # uvicorn's graceful timeout would cancel it.
    keep_sse_streams_at_shutdown()

    try:
        app, runtime = build_app(settings)
    except AppLoadError as exc:
        print(f"config: server.app = {settings.server.app}: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    class Server(uvicorn.Server):
        """uvicorn, plus sd_notify and a drain step (close notification streams) on shutdown."""

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                # What start-up built (modules, the app, settings, keys) lives as long as the process.
                # Frozen, the collector's full passes (every few hundred calls under load) no longer
                # walk it: about a tenth of the CPU a call costs.
                gc.collect()
                gc.freeze()
                systemd.notify("READY=1\nSTATUS=serving")
                logger.info(
                    "serving",
                    extra={"event": "ready", "settings": describe(settings)},
                )

        async def shutdown(self, sockets: Any = None) -> None:
            systemd.notify("STOPPING=1")
            logger.info("shutting down: draining for at most %g s", settings.server.graceful_timeout)
            runtime.begin_drain()
            grace = settings.server.graceful_timeout

            async def end_what_is_left() -> None:
                # Shortly before uvicorn would cancel them: calls still running get a JSON-RPC
                # error on their own stream, then every SSE stream still open ends cleanly.
                await asyncio.sleep(max(grace - 1.5, grace * 0.5))
                await runtime.end_calls()
                end_sse_streams()

            ender = asyncio.get_running_loop().create_task(end_what_is_left())
            try:
                await super().shutdown(sockets=sockets)
            finally:
                ender.cancel()

    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_config=None,
        access_log=False,
        proxy_headers=False,  # X-Forwarded-For is read by the app, only from trusted proxies
        server_header=False,
        timeout_graceful_shutdown=settings.server.graceful_timeout,
        timeout_keep_alive=30,
        # Connections and tasks beyond this get 503 at once instead of piling up.
        limit_concurrency=settings.server.max_connections,
        lifespan="on",
        http=header_deadline_protocol(settings.server.header_timeout),
        loop="asyncio",
    )
    config.load()
    if settings.tls.enabled:
        config.ssl = _ssl_context(settings)
    server = Server(config)
    server.run()
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"serve": cmd_serve, "check-config": cmd_check_config, "migrate": cmd_migrate}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
