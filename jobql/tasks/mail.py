"""Welcome emails, sent with Flask-Mail from a small Flask app that holds the `MAIL_*` settings."""

from __future__ import annotations

import contextlib
import smtplib
import socket
from typing import TYPE_CHECKING

from flask import Flask, render_template
from flask_mail import Connection, Mail, Message

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType

    from jobql.settings import Settings


class MailTemporarilyFailed(Exception):
    """The server could not be reached or answered 4xx: the same send may work later."""


class MailRejected(Exception):
    """The server answered 5xx: sending again will not help."""


def create_mail_app(settings: Settings) -> Flask:
    app = Flask("jobql.tasks")
    app.config.update(
        MAIL_SERVER=settings.mail_server or "localhost",
        MAIL_PORT=settings.mail_port,
        MAIL_USE_TLS=settings.mail_use_tls,
        MAIL_USERNAME=settings.mail_username,
        MAIL_PASSWORD=settings.mail_password.get_secret_value() if settings.mail_password else None,
        MAIL_DEFAULT_SENDER=settings.mail_default_sender,
        SITE_NAME=settings.site_name,
        MAIL_TIMEOUT=settings.mail_timeout,
    )
    Mail(app)
    return app


def message_id(job_id: str) -> str:
    """The same Message-ID for every send of one job, so a repeat can be recognised."""
    return f"<{job_id}@jobql>"


def send_welcome(
    app: Flask,
    job_id: str,
    recipient: str,
    username: str,
    on_accepted: Callable[[str], None] = lambda message_id: None,
) -> str:
    """Send the welcome email; return its Message-ID.

    `on_accepted` is called as soon as the server has accepted the message, before
    the connection is closed: the sooner a send is recorded, the smaller the window
    in which a dying worker leaves it unrecorded.
    """
    with app.app_context():
        site_name = app.config["SITE_NAME"]
        message = Message(
            subject=f"Welcome to {site_name}",
            recipients=[recipient],
            body=render_template("welcome.txt", username=username, site_name=site_name),
            html=render_template("welcome.html", username=username, site_name=site_name),
        )
        message.msgId = message_id(job_id)
        try:
            with TimedConnection(app.extensions["mail"], app.config["MAIL_TIMEOUT"]) as connection:
                connection.send(message)
                on_accepted(message.msgId)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if all(400 <= code < 500 for code in codes):
                raise MailTemporarilyFailed(f"the server deferred the recipient: {codes}") from exc
            raise MailRejected(f"the server refused the recipient ({codes[0]})") from exc
        except smtplib.SMTPResponseException as exc:
            if 400 <= exc.smtp_code < 500:
                raise MailTemporarilyFailed(f"the server answered {exc.smtp_code}") from exc
            raise MailRejected(f"the server answered {exc.smtp_code}") from exc
        except smtplib.SMTPException as exc:
            raise MailTemporarilyFailed(f"SMTP failed: {exc}") from exc
        except OSError as exc:
            raise MailTemporarilyFailed(f"could not reach the SMTP server: {exc}") from exc
    return message.msgId


class TimedConnection(Connection):
    """Flask-Mail's connection, which opens SMTP with no timeout, given one."""

    def __init__(self, mail: Mail, timeout: float) -> None:
        super().__init__(mail)
        self.timeout = timeout

    def configure_host(self) -> smtplib.SMTP | smtplib.SMTP_SSL:
        with _default_socket_timeout(self.timeout):
            return super().configure_host()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Flask-Mail always QUITs, and a server that has hung up after refusing
        # would make that QUIT's error replace the refusal.
        if exc_type is None:
            # The message was accepted; a server that then drops QUIT changes nothing.
            with contextlib.suppress(smtplib.SMTPException, OSError):
                super().__exit__(exc_type, exc_value, tb)  # type: ignore[arg-type]
        elif self.host is not None:
            self.host.close()


@contextlib.contextmanager
def _default_socket_timeout(timeout: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
