"""What the fake UserHub can be told to do wrong, and the answer each fault gives.

A fault matches by external id or a regex on the raw path, fires with a probability (the fake's seeded random) for
a number of requests or until cleared, and the first one that matches and fires decides the request.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from userhub_sync.local.fake_http import STATUS_CODES, STATUS_MESSAGES, Response, error_body, json_response, phrase


class FaultKind(StrEnum):
    STATUS = "status"  # answer with `status` and an error body
    LATENCY = "latency"  # wait `latency_ms`, then answer normally
    DROP = "drop"  # close the connection without an answer
    BAD_JSON_200 = "bad_json_200"  # a 200 whose body is not the JSON it claims to be


class BodyFormat(StrEnum):
    JSON = "json"
    TEXT = "text"
    HTML = "html"


@dataclass
class Fault:
    """One injected misbehaviour; the first fault (in insertion order) that matches and fires decides a request."""

    kind: FaultKind = FaultKind.STATUS
    status: int = 500
    retry_after: str | None = None  # sent verbatim: delta-seconds or an HTTP date
    body_format: BodyFormat = BodyFormat.JSON
    code: str | None = None  # JSON error "code"; default derived from status
    message: str | None = None
    reason: str | None = None
    param: str | None = None
    latency_ms: float = 0.0  # extra delay before the fault acts (the whole point of kind="latency")
    count: int | None = None  # next N matching requests, then the fault expires; None = until cleared
    probability: float = 1.0
    match_external_id: str | None = None
    match_path_regex: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # extra answer headers (Location, Content-Encoding, ...)
    content_type: str | None = None  # None: the body format's; "": no Content-Type header at all
    drip_ms: float = 0.0  # send the body one byte at a time, this far apart (a slow-drip answer)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in set(FaultKind):
            raise ValueError(f"fault kind must be one of {', '.join(FaultKind)}, not {self.kind!r}")
        if not isinstance(self.body_format, str) or self.body_format not in set(BodyFormat):
            raise ValueError(f"fault body_format must be one of {', '.join(BodyFormat)}, not {self.body_format!r}")
        self.kind, self.body_format = FaultKind(self.kind), BodyFormat(self.body_format)
        if not isinstance(self.status, int) or not 100 <= self.status <= 599:
            raise ValueError(f"fault status must be an HTTP status code, not {self.status!r}")
        if self.count is not None and self.count < 1:
            raise ValueError("fault count must be >= 1 or None")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("fault probability must be within [0, 1]")
        if self.latency_ms < 0 or self.drip_ms < 0:
            raise ValueError("fault latency_ms and drip_ms must be >= 0")
        if self.match_path_regex is not None:
            re.compile(self.match_path_regex)  # fail at insertion, not on the first request

    @classmethod
    def from_dict(cls, data: Any) -> Fault:
        """Build from the JSON of ``POST /_fake/faults``; unknown keys are an error so typos don't pass silently."""
        if not isinstance(data, dict):
            raise ValueError("a fault must be a JSON object")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
        return cls(**data)

    def matches(self, raw_path: str, external_id: str | None) -> bool:
        if self.match_external_id is not None and external_id != self.match_external_id:
            return False
        return self.match_path_regex is None or re.search(self.match_path_regex, raw_path) is not None

    def response(self) -> Response:
        """The canned answer of a "status" or "bad_json_200" fault, with the fault's headers and pacing."""
        response = self._body()
        response.headers.update(self.headers)
        if self.content_type is not None:
            response.content_type = self.content_type
        response.drip_ms = self.drip_ms
        return response

    def _body(self) -> Response:
        headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
        if self.kind == FaultKind.BAD_JSON_200:
            status, text = 200, self.message or "<html>this is not json</html>"
            if self.body_format == BodyFormat.JSON:  # claims JSON, isn't: the nastiest variant for a client
                return Response(status, b'{"truncated": ', "application/json", headers)
        else:
            status = self.status
            text = self.message or STATUS_MESSAGES.get(status) or phrase(status)
        if self.body_format == BodyFormat.TEXT:
            return Response(status, text.encode(errors="surrogatepass"), "text/plain; charset=utf-8", headers)
        if self.body_format == BodyFormat.HTML:
            html = self.message or f"<html>{phrase(status).lower()}</html>"
            return Response(status, html.encode(errors="surrogatepass"), "text/html; charset=utf-8", headers)
        code = self.code or STATUS_CODES.get(status, "UNKNOWN")
        return json_response(status, error_body(code, text, reason=self.reason, param=self.param), headers)
