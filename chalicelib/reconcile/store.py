"""Reconcile's state in SNAPSHOT_BUCKET: the committed snapshot, the run record and checkpoints, the last summaries.

Every write that decides who owns the run or which snapshot is committed is conditional (S3 If-Match on the ETag
last read, or If-None-Match: * when there was nothing): losing such a race raises `LeaseConflict`, never overwrites.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from botocore.exceptions import ClientError
from pydantic import ValidationError

from chalicelib.aws_clients import error_code
from chalicelib.observability import get_logger
from chalicelib.reconcile.errors import LeaseConflict, ReconcileError
from chalicelib.reconcile.records import PREFIX, RunRecord, RunStatus, RunSummary
from chalicelib.snapshot import read_entries

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client
    from types_boto3_s3.type_defs import GetObjectOutputTypeDef, ObjectIdentifierTypeDef

log = get_logger("reconcile")

LAST_RUN_KEY = f"{PREFIX}/last-run.json"  # the last run that ended: complete, stopped or failed
LAST_COMPLETE_KEY = f"{PREFIX}/last-complete.json"  # the last complete run
SNAPSHOT_FORMAT = "userhub-sync-snapshot-v1"
LOST_RACE = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})  # a conditional write lost


def get_if_present(s3: S3Client, bucket: str, key: str) -> GetObjectOutputTypeDef | None:
    """The object, or None if there is no such key."""
    try:
        return s3.get_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error_code(error) in ("NoSuchKey", "404"):
            return None
        raise


class WriteCondition(TypedDict, total=False):
    IfMatch: str
    IfNoneMatch: str


def write_condition(etag: str | None) -> WriteCondition:
    """Replace only the object whose ETag was read, or, with none read, create it only if it is still absent."""
    return {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}


@dataclass(frozen=True)
class SnapshotInfo:
    etag: str
    users: int | None  # None: the metadata is missing or not a number
    format: str | None

    def problem(self) -> str | None:
        """What makes the object unusable as a baseline before a byte of it is read, if anything."""
        if self.format != SNAPSHOT_FORMAT:
            return f"format marker is {self.format!r}, expected {SNAPSHOT_FORMAT!r}"
        if self.users is None:
            return "its users metadata is missing or not a number"
        return None


class StateStore:
    """The run record, snapshots and last summary in SNAPSHOT_BUCKET, under `reconcile/<pool>/`."""

    def __init__(self, s3: S3Client, bucket: str, pool_id: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.prefix = f"{PREFIX}/{pool_id}"
        self.snapshot_key = f"{self.prefix}/snapshot.gz"
        self.record_key = f"{self.prefix}/run.json"

    def run_key(self, run_id: str, name: str) -> str:
        return f"{self.prefix}/runs/{run_id}/{name}"

    def read_record(self) -> tuple[RunRecord | None, str | None]:
        obj = get_if_present(self.s3, self.bucket, self.record_key)
        if obj is None:
            return None, None
        try:
            return RunRecord.model_validate_json(obj["Body"].read()), obj["ETag"]
        except ValidationError:
            log.warning("run record unreadable: starting a new run over it", extra={"key": self.record_key})
            return None, obj["ETag"]

    def write_record(self, record: RunRecord, etag: str | None) -> str:
        """Conditional on `etag` (or on absence): losing the race raises LeaseConflict."""
        try:
            response = self.s3.put_object(
                Bucket=self.bucket,
                Key=self.record_key,
                ContentType="application/json",
                Body=record.model_dump_json().encode(),
                **write_condition(etag),
            )
        except ClientError as error:
            if error_code(error) in LOST_RACE:
                raise LeaseConflict(f"run record changed under run {record.run_id}") from None
            raise
        return response["ETag"]

    def delete_record(self) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self.record_key)

    def head_snapshot(self) -> SnapshotInfo | None:
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=self.snapshot_key)
        except ClientError as error:
            if error_code(error) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        metadata = head.get("Metadata") or {}
        try:
            users: int | None = int(metadata["users"])
        except (KeyError, ValueError):
            users = None
        return SnapshotInfo(head["ETag"], users, metadata.get("format"))

    def stream_snapshot(self, etag: str) -> Iterator[tuple[str, int]]:
        """The committed snapshot, streamed (never held whole); fails if it is no longer the one the run began with."""
        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=self.snapshot_key, IfMatch=etag)
        except ClientError as error:
            if error_code(error) in ("PreconditionFailed", "412", "NoSuchKey"):
                raise ReconcileError("the committed snapshot changed during this run") from None
            raise
        yield from read_entries(obj["Body"])

    def put_snapshot(self, data: bytes, users: int, expected_etag: str | None) -> str:
        try:
            response = self.s3.put_object(
                Bucket=self.bucket,
                Key=self.snapshot_key,
                Body=data,
                ContentType="application/gzip",
                Metadata={"format": SNAPSHOT_FORMAT, "users": str(users)},
                **write_condition(expected_etag),
            )
        except ClientError as error:
            if error_code(error) in LOST_RACE:
                raise LeaseConflict("the committed snapshot changed during this run") from None
            raise
        return response["ETag"]

    def put_blob(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="application/gzip")

    def get_blob(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def delete_run_objects(self, run_id: str) -> None:
        prefix = self.run_key(run_id, "")
        listing = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        keys: list[ObjectIdentifierTypeDef] = [{"Key": o["Key"]} for o in listing.get("Contents") or []]
        for start in range(0, len(keys), 1000):
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[start : start + 1000], "Quiet": True})

    def write_summary(self, summary: RunSummary) -> None:
        """The run's summary as the last run, and also as the last complete run if it is one."""
        body = json.dumps(summary.to_dict()).encode()
        if summary.status is RunStatus.COMPLETE:
            self.s3.put_object(Bucket=self.bucket, Key=LAST_COMPLETE_KEY, Body=body, ContentType="application/json")
        self.s3.put_object(Bucket=self.bucket, Key=LAST_RUN_KEY, Body=body, ContentType="application/json")


def _read_summary(s3_client: S3Client, bucket: str, key: str) -> RunSummary | None:
    obj = get_if_present(s3_client, bucket, key)
    return RunSummary.model_validate_json(obj["Body"].read()) if obj else None


def read_last_summary(s3_client: S3Client, bucket: str) -> RunSummary | None:
    """The summary of the last run that finished (complete, stopped or failed), or None if there was none."""
    return _read_summary(s3_client, bucket, LAST_RUN_KEY)


def read_last_complete(s3_client: S3Client, bucket: str) -> RunSummary | None:
    """The summary of the last complete run, or None if none completed since this key was introduced."""
    return _read_summary(s3_client, bucket, LAST_COMPLETE_KEY)
