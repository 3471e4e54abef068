"""Why a reconcile invocation stops early. Each message says what the next run will do about it."""

from __future__ import annotations


class ReconcileError(Exception):
    """The run cannot go on; the message says why and what the next run will do."""


class LeaseConflict(ReconcileError):
    """A conditional write of the run record lost: another invocation owns the run now."""


class TooManyRestarts(ReconcileError):
    """Page tokens kept being rejected; the run is discarded so the next one starts clean."""


class EnqueueError(ReconcileError):
    """SQS kept refusing some messages; the snapshot is not committed, so the next run sends them again."""


class CheckpointUnreadable(ReconcileError):
    """An object the run record points at is damaged or gone; the run is discarded and the next one starts afresh."""
