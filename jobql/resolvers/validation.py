"""Checks of caller input, each raising `BAD_USER_INPUT` with a message that says what to fix."""

from __future__ import annotations

from datetime import timedelta

from email_validator import EmailNotValidError, validate_email

from jobql.errors import BadUserInput

AVATAR_SIZES = range(32, 1025)
QUALITIES = range(1, 101)
USERNAME_MAX = 64


def checked_email(email: str) -> str:
    """The normalized address; syntax only, no DNS look-up."""
    if any(not ch.isprintable() for ch in email):
        raise BadUserInput("The email address contains control characters.", field="email")
    try:
        return validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise BadUserInput(f"The email address is not valid: {exc}", field="email") from exc


def checked_username(username: str) -> str:
    if not 1 <= len(username) <= USERNAME_MAX:
        raise BadUserInput(
            f"The username must be 1 to {USERNAME_MAX} characters long.", field="username"
        )
    if not username.isprintable():
        raise BadUserInput(
            "The username must not contain line breaks or control characters.", field="username"
        )
    return username


def checked_delay(seconds: int, max_seconds: int) -> timedelta | None:
    if not 0 <= seconds <= max_seconds:
        raise BadUserInput(f"delaySeconds must be 0..{max_seconds}.", field="delaySeconds")
    return timedelta(seconds=seconds) if seconds else None


def checked_avatar_options(size: int, quality: int) -> None:
    if size not in AVATAR_SIZES:
        raise BadUserInput(
            f"options.size must be {AVATAR_SIZES.start}..{AVATAR_SIZES.stop - 1}.", field="size"
        )
    if quality not in QUALITIES:
        raise BadUserInput(
            f"options.quality must be {QUALITIES.start}..{QUALITIES.stop - 1}.", field="quality"
        )
