"""A whole AWS-free stack on this machine: moto's server over real HTTP, the environment that points at it, and a
fresh Lambda container.

Used by `demo`, `chaos`, `outage`, the tests and the benchmarks, so they all meet the same moto, over the same HTTP,
as a user of `userhub-sync worker` pointed at a local endpoint would. moto is the `local` extra: the operators'
install does not pull its server stack, and whatever needs it says what to install.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from userhub_sync.ops.errors import OpsError

if TYPE_CHECKING:
    from moto.server import ThreadedMotoServer

DEFAULT_REGION = "us-east-1"
MOTO_ACCOUNT = "123456789012"
FAKE_CREDENTIALS = {
    # moto accepts any credentials; these are not secrets and never leave loopback
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}
INSTALL_HINT = "pip install '.[local]' in the userhub-sync checkout"


class MotoMissing(OpsError):
    """A local command needs moto's server, which the operators' install leaves out."""


def require_moto() -> None:
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        raise MotoMissing(f"this runs AWS locally with moto's server, which is not installed: {INSTALL_HINT}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MotoServer:
    """moto's ThreadedMotoServer on a free loopback port; `endpoint` goes into AWS_ENDPOINT_URL."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None

    def start(self) -> MotoServer:
        require_moto()
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def reset(self) -> None:
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST"), timeout=10)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def patched_environ(values: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, remove) environment variables for the duration of the block."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        _apply(values)
        yield
    finally:
        _apply(saved)


def _apply(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def aws_environ(endpoint: str, region: str = DEFAULT_REGION) -> dict[str, str | None]:
    """Variables that send every boto3 client of this process to `endpoint` and never to real AWS."""
    return {
        **FAKE_CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_PROFILE": None,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def new_container() -> None:
    """Forget every per-container cache, as a new Lambda container starts without them: the settings, deliver's
    deliverer, post_auth's client and queue URL, reconcile's clients. The one reset every local run and test uses."""
    from chalicelib import delivery, post_auth, reconcile
    from chalicelib.settings import reset_settings

    reset_settings()
    delivery.reset_deliverer()
    post_auth.queue.reset()
    reconcile.reset_clients()
