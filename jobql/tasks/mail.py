"""Email, sent with Flask-Mail from a small Flask app that holds the `MAIL_*` settings.

What an email says is its kind's business: a kind renders templates with `Mailer.render`
and sends an `Email`.
"""

from __future__ import annotations

import contextlib
import select
import smtplib
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask
from flask_mail import Connection, Mail, Message
from jinja2 import Environment, FileSystemLoader, select_autoescape

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from jobql.settings import Settings

# Many servers refuse more messages than this on one connection; reconnecting
# before they do costs one handshake in a hundred messages.
MESSAGES_PER_CONNECTION = 100
# Seconds to wait for the answer to QUIT: the messages are accepted already.
QUIT_TIMEOUT = 1.0


class MailTemporarilyFailed(Exception):
    """The server could not be reached or answered 4xx: the same send may work later."""


class MailRejected(Exception):
    """The server answered 5xx: sending again will not help."""


@dataclass(frozen=True, slots=True)
class Email:
    subject: str
    recipient: str
    text: str
    html: str
    message_id: str  # the same for every send of one job, so that a repeat can be recognised


def create_mail_app(settings: Settings) -> Flask:
    app = Flask("jobql.tasks")
    app.config.update(
        MAIL_SERVER=settings.mail_server or "localhost",
        MAIL_PORT=settings.mail_port,
        MAIL_USE_TLS=settings.mail_use_tls,
        MAIL_USERNAME=settings.mail_username,
        MAIL_PASSWORD=settings.mail_password.get_secret_value() if settings.mail_password else None,
        MAIL_DEFAULT_SENDER=settings.mail_default_sender,
        MAIL_TIMEOUT=settings.mail_timeout,
    )
    Mail(app)
    return app


def message_id(job_id: str) -> str:
    """The same Message-ID for every send of one job, so a repeat can be recognised."""
    return f"<{job_id}@jobql>"


class Mailer:
    """Sends emails over one SMTP connection, kept open from one email to the next.

    Opening a connection (TCP, the greeting, EHLO, and STARTTLS and AUTH where configured)
    and closing it cost more than a send. A connection is used again only if it has been
    idle for less than `keepalive` seconds, has carried fewer than `messages_per_connection`
    messages, and the server has said nothing since its last answer: a server that gives
    up on an idle client says 421 or hangs up, and either one is waiting on the socket.
    A connection that failed in any way is dropped, so the next send starts afresh. Each
    thread has a connection of its own (a pool process has one thread that sends).
    """

    def __init__(
        self,
        app: Flask,
        keepalive: float,
        messages_per_connection: int = MESSAGES_PER_CONNECTION,
    ) -> None:
        self.app = app
        self.keepalive = keepalive
        self.messages_per_connection = messages_per_connection
        self._session = _Session()
        # HTML templates escape what they are given, text ones do not (as Flask's own).
        # A template is read once per process: a worker is restarted to deploy new ones,
        # and not checking the file's age saves its path's stat calls on every email.
        self._templates = Environment(
            loader=FileSystemLoader("/"),
            autoescape=select_autoescape(["html", "htm", "xml"]),
            auto_reload=False,
        )

    def render(self, template: Path, **values: Any) -> str:
        """`template` (a file), rendered with `values`."""
        path = template if template.is_absolute() else template.resolve()
        return self._templates.get_template(str(path)).render(**values)

    def send(
        self, email: Email, on_accepted: Callable[[str], None] = lambda message_id: None
    ) -> str:
        """Send `email`; return its Message-ID.

        `on_accepted` is called as soon as the server has accepted the message, before
        anything else is said to it: the sooner a send is recorded, the smaller the window
        in which a dying worker leaves it unrecorded.
        """
        with self.app.app_context():  # the default sender is read from the app
            message = Message(
                subject=email.subject,
                recipients=[email.recipient],
                body=email.text,
                html=email.html,
            )
            message.msgId = email.message_id
            try:
                self._send(message)
            except smtplib.SMTPRecipientsRefused as exc:
                codes = [code for code, _ in exc.recipients.values()]
                if all(400 <= code < 500 for code in codes):
                    raise MailTemporarilyFailed(
                        f"the server deferred the recipient: {codes}"
                    ) from exc
                raise MailRejected(f"the server refused the recipient ({codes[0]})") from exc
            except smtplib.SMTPResponseException as exc:
                if 400 <= exc.smtp_code < 500:
                    raise MailTemporarilyFailed(f"the server answered {exc.smtp_code}") from exc
                raise MailRejected(f"the server answered {exc.smtp_code}") from exc
            except smtplib.SMTPException as exc:
                raise MailTemporarilyFailed(f"SMTP failed: {exc}") from exc
            except OSError as exc:
                raise MailTemporarilyFailed(f"could not reach the SMTP server: {exc}") from exc
        on_accepted(message.msgId)
        if not self._reusable():  # say goodbye now, not when the next email comes
            self.close()
        return message.msgId

    def close(self) -> None:
        """QUIT and close this thread's connection, if it has one."""
        connection, self._session.connection = self._session.connection, None
        if connection is None or connection.host is None:
            return
        host = connection.host
        if host.sock is not None and not _readable(host.sock):
            host.sock.settimeout(min(QUIT_TIMEOUT, self.app.config["MAIL_TIMEOUT"]))
            with contextlib.suppress(smtplib.SMTPException, OSError):
                host.quit()
        host.close()

    def _send(self, message: Message) -> None:
        session = self._session
        if not self._reusable():
            self.close()
        if session.connection is None:
            connection = TimedConnection(
                self.app.extensions["mail"], self.app.config["MAIL_TIMEOUT"]
            )
            session.connection = connection.__enter__()  # connects, unless sending is suppressed
            session.sent = 0
        connection = session.connection
        try:
            connection.send(message)
        except BaseException:
            # Whatever state the session is in, it is not one to send the next message in;
            # and QUIT could only replace this error with its own.
            session.connection = None
            if connection.host is not None:
                connection.host.close()
            raise
        session.sent += 1
        session.idle_since = time.monotonic()

    def _reusable(self) -> bool:
        """Whether this thread's connection may carry the next message."""
        session = self._session
        if session.connection is None:
            return False
        host = session.connection.host
        if host is None:  # sending is suppressed: there is no connection to wear out
            return True
        if host.sock is None or session.sent >= self.messages_per_connection:
            return False
        if time.monotonic() - session.idle_since >= self.keepalive:
            return False
        return not _readable(host.sock)


class _Session(threading.local):
    """A thread's connection, and what it has done so far."""

    connection: TimedConnection | None = None
    sent = 0
    idle_since = 0.0


class TimedConnection(Connection):
    """Flask-Mail's connection, which opens SMTP with no timeout, given one."""

    def __init__(self, mail: Mail, timeout: float) -> None:
        super().__init__(mail)
        self.timeout = timeout

    def configure_host(self) -> smtplib.SMTP | smtplib.SMTP_SSL:
        with _default_socket_timeout(self.timeout):
            return super().configure_host()


def _readable(sock: socket.socket) -> bool:
    """Whether the peer has sent something (or hung up) that nobody has read yet."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


@contextlib.contextmanager
def _default_socket_timeout(timeout: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
