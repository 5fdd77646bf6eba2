"""`python -m mtlsweep.mlflow_server start|stop|status`, the same as `mtlsweep server ...`."""

from __future__ import annotations

import argparse
import sys

from mtlsweep.config.errors import guarded
from mtlsweep.mlflow_server import server

DEFAULT_DIR = "workspace"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--dir", default=DEFAULT_DIR,
                        help="project directory holding the server's database, artifacts, "
                             f"log and state (default: ./{DEFAULT_DIR})")
    parser.add_argument("--backend-uri", default=None,
                        help="SQLAlchemy URI of the backend store, e.g. "
                             "postgresql://user@host/db (default: sqlite in --dir)")
    parser.add_argument("--artifacts", default=None,
                        help="artifact destination, a local path or s3://... "
                             "(default: DIR/artifacts)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--allowed-hosts", default=None,
                        help="comma-separated Host headers to accept when not on loopback")
    parser.add_argument("--auth", action="store_true",
                        help="basic auth; the admin is MLFLOW_TRACKING_USERNAME / "
                             "MLFLOW_TRACKING_PASSWORD from the environment")
    parser.add_argument("--wait", type=float, default=90.0,
                        help="seconds to wait for the server to answer")


def _print_info(info: server.ServerInfo) -> None:
    print(f"url:        {info.url}")
    print(f"pid:        {info.pid}")
    print(f"backend:    {info.backend}")
    print(f"artifacts:  {info.artifact_root}")
    print(f"log:        {info.log_path}")
    print(f"auth:       {'basic' if info.auth else 'none'}")


def run(args: argparse.Namespace) -> int:
    if args.action == "start":
        allowed = [h.strip() for h in args.allowed_hosts.split(",")] if args.allowed_hosts else None
        info = server.start(
            args.dir, backend_uri=args.backend_uri, artifact_root=args.artifacts,
            host=args.host, port=args.port, auth=args.auth, workers=args.workers,
            wait_s=args.wait, allowed_hosts=allowed,
        )
        print(f"MLflow server running at {info.url}")
        _print_info(info)
        print(f"use it:     export MLFLOW_TRACKING_URI={info.url}")
        return 0
    if args.action == "stop":
        if server.stop(args.dir):
            print(f"stopped the MLflow server of {args.dir}")
        else:
            print(f"no MLflow server running for {args.dir}")
        return 0
    info = server.status(args.dir)
    if info is None:
        print(f"no MLflow server recorded for {args.dir}")
        return 1
    state = "answering" if info.healthy else ("running, not answering" if info.alive else "dead")
    print(f"status:     {state}")
    _print_info(info)
    return 0 if info.healthy else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtlsweep server",
                                     description="Start, stop or inspect the MLflow server.")
    add_arguments(parser)
    return guarded(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
