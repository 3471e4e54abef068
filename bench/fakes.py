"""In-process stand-ins for AWS where the benchmark measures our code and not moto's: what each one answers is what
the measured code reads, and nothing more. Every other AWS call in the benchmarks goes to moto over HTTP.
"""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class NoSQS:
    """Stands in for deliver's SQS client: on the all-success path deliver needs nothing from SQS, not even its
    queue's redrive policy and retention (read only when a record may have to wait), so any call is a bug and
    fails loudly."""

    calls = 0

    def __getattr__(self, name: str) -> Any:
        NoSQS.calls += 1
        raise AssertionError(f"deliver called sqs.{name} on the all-success path")


class CountingSQS:
    """SendMessageBatch that counts and checks the bodies parse: moto's SQS is O(depth), AWS's is not."""

    def __init__(self) -> None:
        self.calls = 0
        self.messages = 0

    def get_queue_url(self, QueueName: str) -> dict[str, str]:
        return {"QueueUrl": f"https://sqs.invalid/123456789012/{QueueName}"}

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        self.calls += 1
        self.messages += len(Entries)
        json.loads(Entries[0]["MessageBody"])
        return {"Successful": [{"Id": e["Id"], "MessageId": e["Id"]} for e in Entries], "Failed": []}


class FakeCognito:
    """ListUsers pages computed from an index: no pool held in memory, so tracemalloc sees only the run."""

    def __init__(self, size: int) -> None:
        self.ids = range(size)
        self.changed: set[int] = set()
        self.deleted: set[int] = set()
        self.added = 0

    def mutate(self) -> None:
        """1 % changed, 0.5 % deleted, 0.5 % added: an ordinary night."""
        n = len(self.ids)
        self.changed = set(range(0, n, 100))
        self.deleted = set(range(1, n, 200))
        self.added = n // 200

    def _user(self, i: int) -> dict[str, Any]:
        name = f"user{i:07d}@example.com"
        modified = EPOCH + timedelta(days=1 if i in self.changed else 0, seconds=i)
        return {
            "Username": name,
            "Attributes": [
                {"Name": "sub", "Value": str(uuid.UUID(int=i + 1))},
                {"Name": "email", "Value": name},
                {"Name": "email_verified", "Value": "true"},
                {"Name": "name", "Value": f"User {i} {'changed' if i in self.changed else ''}".strip()},
            ],
            "UserCreateDate": EPOCH,
            "UserLastModifiedDate": modified,
            "Enabled": True,
            "UserStatus": "CONFIRMED",
        }

    def list_users(self, UserPoolId: str, Limit: int, PaginationToken: str | None = None) -> dict[str, Any]:
        assert Limit <= 60
        total = len(self.ids) + self.added
        start = int(PaginationToken or 0)
        page = [self._user(i) for i in range(start, min(start + Limit, total)) if i not in self.deleted]
        end = start + Limit
        return {"Users": page, **({"PaginationToken": str(end)} if end < total else {})}


class FakeS3:
    """Objects in a dict, with S3's conditional writes (If-Match, If-None-Match) that the run's lease relies on."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str, dict[str, str]]] = {}
        self.version = 0

    def _error(self, code: str) -> Exception:
        from botocore.exceptions import ClientError

        return ClientError({"Error": {"Code": code}}, "S3")

    def put_object(
        self,
        Bucket: str,
        Key: str,
        Body: bytes,
        IfMatch: str | None = None,
        IfNoneMatch: str | None = None,
        Metadata: dict[str, str] | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        current = self.objects.get(Key)
        if (IfNoneMatch and current) or (IfMatch and (not current or current[1] != IfMatch)):
            raise self._error("PreconditionFailed")
        self.version += 1
        etag = f'"{self.version}"'
        self.objects[Key] = (Body, etag, Metadata or {})
        return {"ETag": etag}

    def get_object(self, Bucket: str, Key: str, IfMatch: str | None = None) -> dict[str, Any]:
        if Key not in self.objects:
            raise self._error("NoSuchKey")
        body, etag, metadata = self.objects[Key]
        return {"Body": io.BytesIO(body), "ETag": etag, "Metadata": metadata}

    def head_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        if Key not in self.objects:
            raise self._error("404")
        _, etag, metadata = self.objects[Key]
        return {"ETag": etag, "Metadata": metadata}

    def delete_object(self, Bucket: str, Key: str) -> None:
        self.objects.pop(Key, None)

    def list_objects_v2(self, Bucket: str, Prefix: str) -> dict[str, Any]:
        return {"Contents": [{"Key": k} for k in self.objects if k.startswith(Prefix)]}

    def delete_objects(self, Bucket: str, Delete: dict[str, Any]) -> None:
        for item in Delete["Objects"]:
            self.objects.pop(item["Key"], None)

    def stored_bytes(self) -> int:
        return sum(len(body) for body, _, _ in self.objects.values())
