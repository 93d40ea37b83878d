"""The `welcome_email` kind: "Welcome to {SITE_NAME}", once per address per day.

No `from __future__ import annotations`: Strawberry reads these annotations at run time.
"""

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from email_validator import EmailNotValidError, validate_email

from jobql.auth import SCOPE_SEND_EMAIL
from jobql.kinds import (
    BadUserInput,
    Command,
    Dedupe,
    DuplicateJob,
    JobFailed,
    JobSnapshot,
    Kind,
    MutationInfo,
    RetryLater,
    RetryPolicy,
    TaskContext,
    caller,
    checked_delay,
    enqueue,
    fingerprint_of,
    pseudonym,
)

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from jobql.client import JobData, JobqlClient
    from jobql.tasks.mail import Email, Mailer

ONCE_PER = timedelta(hours=24)
USERNAME_MAX = 64
TEMPLATES = Path(__file__).parent / "templates"
logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WelcomePayload:
    recipient: str
    username: str


@strawberry.type(description="A welcome email the SMTP server accepted.")
class EmailResult:
    recipient: str
    message_id: str


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


async def send_welcome_email(
    info: MutationInfo,
    email: str,
    username: str,
    delay_seconds: Annotated[
        int, strawberry.argument(description="Send no sooner than this many seconds from now.")
    ] = 0,
    idempotency_key: Annotated[
        str | None,
        strawberry.argument(
            description="Sent again with the same arguments within 24 hours: the first job."
        ),
    ] = None,
) -> JobSnapshot:
    """Queue a welcome email; needs the `email:send` scope.

    One email per address per 24 hours: asking again returns the job already queued.
    """
    caller(info, scope=SCOPE_SEND_EMAIL)
    address = checked_email(email)
    payload = WelcomePayload(address, checked_username(username))
    delay = checked_delay(info, delay_seconds)
    # Keyed by a pseudonym: a key's name is shown by any SCAN (and Redis tools).
    dedupe = Dedupe(f"jobql:welcome:{pseudonym(info, address.lower())}", ONCE_PER)
    try:
        job = await enqueue(
            info,
            kind,
            payload,
            delay=delay,
            dedupe=dedupe,
            idempotency_key=idempotency_key,
            # Stored for a day: keyed, as a plain digest of guessable values can be undone.
            fingerprint=pseudonym(info, fingerprint_of(address, payload.username, delay_seconds)),
        )
    except DuplicateJob:
        raise BadUserInput(
            "A welcome email to this address was already sent in the last 24 hours.",
            field="email",
        ) from None
    logger.debug("Accepted a welcome email job", extra={"job_id": job.id})
    return job


def welcome(mailer: "Mailer", site_name: str, job_id: str, payload: WelcomePayload) -> "Email":
    """The email, the same for every delivery of one job (its Message-ID included)."""
    from jobql.tasks.mail import Email, message_id  # the worker's side

    values = {"username": payload.username, "site_name": site_name}
    return Email(
        subject=f"Welcome to {site_name}",
        recipient=payload.recipient,
        text=mailer.render(TEMPLATES / "welcome.txt", **values),
        html=mailer.render(TEMPLATES / "welcome.html", **values),
        message_id=message_id(job_id),
    )


def send(ctx: TaskContext, payload: WelcomePayload) -> EmailResult:
    """Send it, unless an earlier delivery did (and died before it could say so)."""
    if ctx.checkpoint is not None:
        return EmailResult(recipient=payload.recipient, message_id=ctx.checkpoint)
    from jobql.tasks.mail import MailRejected, MailTemporarilyFailed  # the worker's side

    email = welcome(ctx.mailer, ctx.settings.site_name, ctx.job_id, payload)
    ctx.check_cancelled()  # the last moment an email can still be not sent
    try:
        # Saved as soon as the server has accepted it: no later delivery sends it again
        # (PROGRESS 90: only the final write is left).
        sent = ctx.mailer.send(email, on_accepted=lambda sent_id: ctx.save_checkpoint(sent_id, 90))
    except MailRejected as exc:
        raise JobFailed("SMTP_REJECTED", f"The mail server refused: {exc}.") from None
    except MailTemporarilyFailed as exc:
        raise RetryLater("SMTP_UNAVAILABLE", str(exc)) from exc
    return EmailResult(recipient=payload.recipient, message_id=sent)


# --- the terminal client: `jobql send-welcome` ------------------------------------------------

SEND_WELCOME = """
mutation SendWelcome($email: String!, $username: String!, $delaySeconds: Int! = 0) {
    sendWelcomeEmail(email: $email, username: $username, delaySeconds: $delaySeconds) {
        ...JobFields
    }
}"""


def _arguments(parser: "argparse.ArgumentParser") -> None:
    parser.add_argument("email")
    parser.add_argument("username")


async def _queue(client: "JobqlClient", args: "argparse.Namespace") -> "JobData":
    variables = {"email": args.email, "username": args.username}
    return await client.mutate(SEND_WELCOME, "SendWelcome", variables)


def _describe(result: dict[str, Any], absolute: "Callable[[str], str]") -> list[str]:
    return [f"message-id: {result['messageId']}", f"recipient: {result['recipient']}"]


kind = Kind(
    name="welcome_email",
    payload=WelcomePayload,
    result=EmailResult,
    run=send,
    mutation=send_welcome_email,
    retry=RetryPolicy(
        max_retries=lambda settings: settings.mail_max_retries,
        backoff=lambda settings: settings.mail_retry_backoff,
    ),
    command=Command(
        name="send-welcome",
        help="queue a welcome email on a running server (scope email:send)",
        add_arguments=_arguments,
        queue=_queue,
    ),
    describe=_describe,
)
