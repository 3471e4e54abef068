"""The EventBridge rule of `capture`: which CloudTrail records of Cognito reach it. Standard library only, because
app.py reads it at import, on every function's cold start (post_auth's included)."""

from __future__ import annotations

from typing import Any

# User-changing operations: Admin* user, group and status calls, and what users change with their own token.
# Left out: sign-ins and sign-ups (the post-authentication and post-confirmation triggers), ChangePassword (no
# profile change), reads (EventBridge never receives Get*/List*/Describe*).
CAPTURED_OPERATIONS = (
    "AdminCreateUser",
    "AdminDeleteUser",
    "AdminDisableUser",
    "AdminEnableUser",
    "AdminUpdateUserAttributes",
    "AdminDeleteUserAttributes",
    "AdminConfirmSignUp",
    "AdminAddUserToGroup",
    "AdminRemoveUserFromGroup",
    "AdminResetUserPassword",
    "AdminSetUserPassword",
    "AdminLinkProviderForUser",
    "AdminDisableProviderForUser",
    "UpdateUserAttributes",
    "DeleteUserAttributes",
    "VerifyUserAttribute",
    "DeleteUser",
    "ConfirmForgotPassword",
)
EVENT_PATTERN: dict[str, Any] = {
    "source": ["aws.cognito-idp"],
    "detail-type": ["AWS API Call via CloudTrail"],
    "detail": {
        "eventSource": ["cognito-idp.amazonaws.com"],
        "errorCode": [{"exists": False}],
        "eventName": list(CAPTURED_OPERATIONS),
    },
}


def capture_enabled(value: str | None) -> bool:
    """CAPTURE: `on` (the default) deploys the capture function and its rule; `off` leaves them out, for stages
    that do without a CloudTrail trail and rely on sign-ins and the nightly reconcile alone."""
    text = (value or "").strip().lower() or "on"
    if text in ("on", "true", "1", "yes"):
        return True
    if text in ("off", "false", "0", "no"):
        return False
    raise ValueError(f"CAPTURE must be on or off (or true/false, yes/no, 1/0), not {value!r}")
