"""moto 5.2 does not model a function's LoggingConfig (advanced logging controls): UpdateFunctionConfiguration drops
it and GetFunctionConfiguration never returns it. This teaches moto's in-process Lambda backend what AWS does, so
that `wire`'s LoggingConfig step runs against moto over HTTP like its other steps: a function starts with
`{"LogFormat": "Text", "LogGroup": "/aws/lambda/<name>"}` and an update merges the given fields into it (AWS keeps
the fields a request leaves out). Set `ENABLED = False` to see an endpoint without it (how wire reports that)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

ENABLED = True


@contextlib.contextmanager
def lambda_logging_config() -> Iterator[None]:
    from moto.awslambda.models import LambdaFunction

    get_configuration, update_configuration = LambdaFunction.get_configuration, LambdaFunction.update_configuration

    def current(function: Any) -> dict[str, Any]:
        default = {"LogFormat": "Text", "LogGroup": f"/aws/lambda/{function.function_name}"}
        return dict(getattr(function, "_test_logging_config", default))

    def get(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        config = get_configuration(self, *args, **kwargs)
        if ENABLED:
            config["LoggingConfig"] = current(self)
        return config

    def update(self: Any, updates: dict[str, Any]) -> dict[str, Any]:
        if ENABLED and isinstance(updates.get("LoggingConfig"), dict):
            self._test_logging_config = {**current(self), **updates["LoggingConfig"]}
        return update_configuration(self, updates)

    LambdaFunction.get_configuration, LambdaFunction.update_configuration = get, update  # type: ignore[method-assign]
    try:
        yield
    finally:
        LambdaFunction.get_configuration = get_configuration  # type: ignore[method-assign]
        LambdaFunction.update_configuration = update_configuration  # type: ignore[method-assign]
