"""A moto server in its own process, whose user pools the reconcile benchmark seeds and edits through the backend.

Its own process so that moto's O(N)-per-page ListUsers does not share a GIL (or a traced heap) with the code under
measurement. Protocol: one JSON object per line. It prints `{"endpoint": ...}` when ready, then answers
`{"cmd": "seed", "pool": id, "count": n}`, `{"cmd": "change", "pool": id, "count": k, "seed": s}` and
`{"cmd": "quit"}`, one reply line each.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
import uuid
from typing import Any


def _seed(backend: Any, pool: str, count: int, prefix: str) -> dict[str, Any]:
    started = time.perf_counter()
    existing = len(backend.user_pools[pool].users)
    for i in range(existing, existing + count):
        name = f"{prefix}{i:06d}@example.com"
        backend.admin_create_user(
            pool, name, None, None, [{"Name": "email", "Value": name}, {"Name": "name", "Value": f"User {i}"}]
        )
    return {"users": len(backend.user_pools[pool].users), "seconds": time.perf_counter() - started}


def _change(backend: Any, pool: str, count: int, seed: int) -> dict[str, Any]:
    users = backend.user_pools[pool].users
    names = random.Random(seed).sample(sorted(users), count)
    for name in names:
        users[name].update_attributes([{"Name": "name", "Value": f"Changed {uuid.uuid4().hex[:8]}"}])
    return {"changed": names}


def main() -> int:
    from moto.cognitoidp.models import cognitoidp_backends
    from moto.server import ThreadedMotoServer

    from userhub_sync.local.moto import DEFAULT_REGION, MOTO_ACCOUNT, free_port

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    backend = cognitoidp_backends[MOTO_ACCOUNT][DEFAULT_REGION]
    print(json.dumps({"endpoint": f"http://127.0.0.1:{port}"}), flush=True)
    try:
        for line in sys.stdin:
            request = json.loads(line)
            try:
                if request["cmd"] == "quit":
                    print(json.dumps({"ok": True}), flush=True)
                    break
                if request["cmd"] == "seed":
                    reply = _seed(backend, request["pool"], int(request["count"]), request.get("prefix", "user"))
                elif request["cmd"] == "change":
                    reply = _change(backend, request["pool"], int(request["count"]), int(request.get("seed", 1)))
                else:
                    reply = {"error": f"unknown command {request['cmd']!r}"}
            except Exception as error:
                reply = {"error": f"{type(error).__name__}: {error}"}
            print(json.dumps(reply), flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
