"""An in-memory SQS for the backlog-drain benchmark, where moto cannot go: moto's SQS does work proportional to the
queue's depth on every send and receive, so a backlog of 20,000 messages would measure moto, not deliver.

It speaks SQS's JSON protocol over HTTP on loopback, so the worker processes drive it through boto3 exactly as
they drive moto or AWS (AWS_ENDPOINT_URL). It keeps what the benchmark depends on, and nothing else:
- visibility: a received message is hidden for the queue's (or the request's) visibility timeout, and
  ChangeMessageVisibility sets it from now, 0 included; only the latest receipt handle is valid;
- receive counts: ApproximateReceiveCount counts every receive, and SentTimestamp is the first send;
- redrive: the receive after maxReceiveCount moves the message to the dead-letter queue instead;
- retention: a message older than MessageRetentionPeriod is dropped at receive;
- long polling (WaitTimeSeconds), batches of at most 10, message attributes kept as sent.
Not modelled: FIFO, delays, encryption, approximate counts (these are exact), any quota. For benchmarks only.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACCOUNT = "123456789012"
REGION = "us-east-1"


@dataclass
class _Message:
    id: str
    body: str
    attributes: dict[str, Any]
    sent_ms: int
    receives: int = 0
    handle: str = ""
    visible_at: float = 0.0


@dataclass
class _Queue:
    name: str
    attributes: dict[str, str] = field(default_factory=dict)
    messages: dict[str, _Message] = field(default_factory=dict)
    ready: list[tuple[float, int, str]] = field(default_factory=list)  # (visible_at, seq, id): a lazy heap

    @property
    def url(self) -> str:
        return f"{ACCOUNT}/{self.name}"

    @property
    def arn(self) -> str:
        return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{self.name}"


class StandInSqs:
    """The queues and their operations; thread-safe. `serve()` exposes them over HTTP."""

    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}
        self._lock = threading.Condition()
        self._seq = itertools.count()

    # ---------------------------------------------------------------- state
    def _queue(self, url_or_name: str) -> _Queue:
        name = url_or_name.rstrip("/").rsplit("/", 1)[-1]
        if name not in self._queues:
            raise _Error("AWS.SimpleQueueService.NonExistentQueue", f"queue {name} does not exist")
        return self._queues[name]

    def _push(self, queue: _Queue, message: _Message) -> None:
        heapq.heappush(queue.ready, (message.visible_at, next(self._seq), message.id))
        self._lock.notify_all()

    # ---------------------------------------------------------------- operations (SQS's names and shapes)
    def CreateQueue(self, QueueName: str, Attributes: dict[str, str] | None = None, **_: Any) -> dict[str, Any]:
        queue = self._queues.setdefault(QueueName, _Queue(QueueName))
        queue.attributes.update({"VisibilityTimeout": "30", "MessageRetentionPeriod": "345600", **(Attributes or {})})
        return {"QueueUrl": self._url(queue)}

    def GetQueueUrl(self, QueueName: str, **_: Any) -> dict[str, Any]:
        return {"QueueUrl": self._url(self._queue(QueueName))}

    def GetQueueAttributes(self, QueueUrl: str, **_: Any) -> dict[str, Any]:
        queue, now = self._queue(QueueUrl), time.time()
        visible = sum(1 for m in queue.messages.values() if m.visible_at <= now)
        return {
            "Attributes": {
                **queue.attributes,
                "QueueArn": queue.arn,
                "ApproximateNumberOfMessages": str(visible),
                "ApproximateNumberOfMessagesNotVisible": str(len(queue.messages) - visible),
                "ApproximateNumberOfMessagesDelayed": "0",
            }
        }

    def SendMessageBatch(self, QueueUrl: str, Entries: list[dict[str, Any]], **_: Any) -> dict[str, Any]:
        if not 1 <= len(Entries) <= 10:
            raise _Error("AWS.SimpleQueueService.TooManyEntriesInBatchRequest", "1 to 10 entries")
        queue = self._queue(QueueUrl)
        done = []
        for entry in Entries:
            message = self._add(queue, entry["MessageBody"], entry.get("MessageAttributes") or {})
            done.append({"Id": entry["Id"], "MessageId": message.id, "MD5OfMessageBody": _md5(message.body)})
        return {"Successful": done, "Failed": []}

    def SendMessage(self, QueueUrl: str, MessageBody: str, **kwargs: Any) -> dict[str, Any]:
        message = self._add(self._queue(QueueUrl), MessageBody, kwargs.get("MessageAttributes") or {})
        return {"MessageId": message.id, "MD5OfMessageBody": _md5(MessageBody)}

    def _add(self, queue: _Queue, body: str, attributes: dict[str, Any], sent_ms: int | None = None) -> _Message:
        message = _Message(uuid.uuid4().hex, body, attributes, sent_ms or int(time.time() * 1000))
        queue.messages[message.id] = message
        self._push(queue, message)
        return message

    def ReceiveMessage(self, QueueUrl: str, **kwargs: Any) -> dict[str, Any]:
        queue = self._queue(QueueUrl)
        wanted = min(int(kwargs.get("MaxNumberOfMessages", 1)), 10)
        visibility = float(kwargs.get("VisibilityTimeout", queue.attributes["VisibilityTimeout"]))
        wait_until = time.time() + float(kwargs.get("WaitTimeSeconds", 0))
        while True:
            got = self._take(queue, wanted, visibility)
            if got or time.time() >= wait_until:
                return {"Messages": got} if got else {}
            self._lock.wait(timeout=min(0.2, max(wait_until - time.time(), 0)))

    def _take(self, queue: _Queue, wanted: int, visibility: float) -> list[dict[str, Any]]:
        now, out = time.time(), []
        redrive = json.loads(queue.attributes.get("RedrivePolicy") or "{}")
        retention_ms = int(queue.attributes["MessageRetentionPeriod"]) * 1000
        while queue.ready and len(out) < wanted and queue.ready[0][0] <= now:
            visible_at, _, message_id = heapq.heappop(queue.ready)
            message = queue.messages.get(message_id)
            if message is None or message.visible_at != visible_at:
                continue  # deleted, or a stale heap entry (its visibility changed since)
            if now * 1000 - message.sent_ms > retention_ms:
                del queue.messages[message_id]
                continue
            if redrive and message.receives >= int(redrive["maxReceiveCount"]):
                del queue.messages[message_id]
                target = self._queue(redrive["deadLetterTargetArn"].rsplit(":", 1)[-1])
                moved = self._add(target, message.body, message.attributes, message.sent_ms)
                moved.receives = message.receives
                continue
            message.receives += 1
            message.handle = f"{message.id}:{message.receives}:{uuid.uuid4().hex[:8]}"
            message.visible_at = now + visibility
            heapq.heappush(queue.ready, (message.visible_at, next(self._seq), message.id))
            out.append(
                {
                    "MessageId": message.id,
                    "ReceiptHandle": message.handle,
                    "MD5OfBody": _md5(message.body),
                    "Body": message.body,
                    "Attributes": {
                        "ApproximateReceiveCount": str(message.receives),
                        "SentTimestamp": str(message.sent_ms),
                        "ApproximateFirstReceiveTimestamp": str(message.sent_ms),
                    },
                    "MessageAttributes": message.attributes,
                }
            )
        return out

    def DeleteMessageBatch(self, QueueUrl: str, Entries: list[dict[str, Any]], **_: Any) -> dict[str, Any]:
        queue = self._queue(QueueUrl)
        ok, failed = [], []
        for entry in Entries:
            message = self._by_handle(queue, entry["ReceiptHandle"])
            if message is None:
                failed.append({"Id": entry["Id"], "Code": "ReceiptHandleIsInvalid", "SenderFault": True})
                continue
            del queue.messages[message.id]
            ok.append({"Id": entry["Id"]})
        return {"Successful": ok, "Failed": failed}

    def ChangeMessageVisibilityBatch(self, QueueUrl: str, Entries: list[dict[str, Any]], **_: Any) -> dict[str, Any]:
        queue, now = self._queue(QueueUrl), time.time()
        ok, failed = [], []
        for entry in Entries:
            message = self._by_handle(queue, entry["ReceiptHandle"])
            if message is None or not 0 <= int(entry["VisibilityTimeout"]) <= 43_200:
                failed.append({"Id": entry["Id"], "Code": "ReceiptHandleIsInvalid", "SenderFault": True})
                continue
            message.visible_at = now + int(entry["VisibilityTimeout"])
            self._push(queue, message)
            ok.append({"Id": entry["Id"]})
        return {"Successful": ok, "Failed": failed}

    def _by_handle(self, queue: _Queue, handle: str) -> _Message | None:
        message = queue.messages.get(handle.split(":", 1)[0])
        return message if message is not None and message.handle == handle else None

    def _url(self, queue: _Queue) -> str:
        return f"{self.endpoint}/{queue.url}"

    # ---------------------------------------------------------------- HTTP
    endpoint = ""

    def serve(self, port: int = 0) -> ThreadingHTTPServer:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would add ~40 ms

            def do_POST(self) -> None:
                operation = self.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                try:
                    if not operation or not hasattr(StandInSqs, operation):
                        raise _Error("InvalidAction", f"{operation} is not served by the stand-in")
                    if operation == "ReceiveMessage":  # waits without holding the lock's other users back
                        with standin._lock:
                            answer = standin.ReceiveMessage(**request)
                    else:
                        with standin._lock:
                            answer = getattr(standin, operation)(**request)
                    status, payload = 200, answer
                except _Error as error:
                    status, payload = 400, {"__type": f"com.amazonaws.sqs#{error.code}", "message": error.message}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.0")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True, name="sqs-standin").start()
        return server


class _Error(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()
