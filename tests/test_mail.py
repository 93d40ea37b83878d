"""Unit tests for the welcome email, against a real SMTP server (aiosmtpd) and real sockets."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, BinaryIO

import pytest

from jobql.kinds.welcome_email import WelcomePayload, welcome
from jobql.redis_server import free_port
from jobql.tasks.mail import (
    Mailer,
    MailRejected,
    MailTemporarilyFailed,
    create_mail_app,
    message_id,
)
from tests.support import DEFERRING_DOMAIN, REJECTING_DOMAIN, SmtpServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from email.message import EmailMessage

    from jobql.settings import Settings

GUARD_SECONDS = 10.0


class WelcomeMailer(Mailer):
    """A mailer that sends the welcome kind's email, as its task body does."""

    def __init__(self, *args: Any, site_name: str = "Testsite", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.site_name = site_name

    def send_welcome(
        self,
        job_id: str,
        recipient: str,
        username: str,
        on_accepted: Callable[[str], None] = lambda message_id: None,
    ) -> str:
        email = welcome(self, self.site_name, job_id, WelcomePayload(recipient, username))
        return self.send(email, on_accepted)


def unique(prefix: str = "job") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def recipient(domain: str = "example.com") -> str:
    return f"{unique('user')}@{domain}"


def text_of(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None, f"no text/{subtype} part"
    assert part.get_content_type() == f"text/{subtype}"
    content = part.get_content()
    assert isinstance(content, str)
    return content


def only_message_to(smtp_server: SmtpServer, address: str) -> EmailMessage:
    received = smtp_server.handler.to(address)
    assert len(received) == 1, received
    return received[0]


def send_guarded(
    mailer: WelcomeMailer, address: str, on_accepted: Callable[[str], None] = lambda _: None
) -> BaseException | str:
    """Send in a thread; fail the test, rather than hang it, if it does not finish in time."""
    outcome: list[BaseException | str] = []

    def run() -> None:
        try:
            outcome.append(mailer.send_welcome(unique(), address, "alice", on_accepted))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(GUARD_SECONDS)
    assert not thread.is_alive(), f"send_welcome still running after {GUARD_SECONDS}s"
    assert len(outcome) == 1
    return outcome[0]


@pytest.fixture
def make_mailer(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., WelcomeMailer]]:
    """Mailers built from settings with these overrides, closed when the test ends."""
    mailers: list[WelcomeMailer] = []

    def make(**overrides: object) -> WelcomeMailer:
        settings = make_settings(**overrides)
        mailer = WelcomeMailer(
            create_mail_app(settings),
            keepalive=settings.mail_keepalive,
            site_name=settings.site_name,
        )
        mailers.append(mailer)
        return mailer

    yield make
    for mailer in mailers:
        mailer.close()


@pytest.fixture
def mailer(make_mailer: Callable[..., WelcomeMailer]) -> WelcomeMailer:
    return make_mailer()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port whose listening socket is never accept()ed: connects succeed, nothing is said."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


@pytest.fixture
def stalling_server() -> Iterator[int]:
    """A TCP peer that greets and answers EHLO, then never answers again."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()
    connections: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connections.append(connection)
            connection.settimeout(GUARD_SECONDS)
            with contextlib.suppress(OSError):
                connection.sendall(b"220 stalling.test ESMTP\r\n")
                line = connection.recv(1024)
                if line.upper().startswith((b"EHLO", b"HELO")):
                    connection.sendall(b"250 stalling.test\r\n")
                # Read whatever comes next and never answer it.
                while not stop.is_set() and connection.recv(1024):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        listener.close()
        thread.join(GUARD_SECONDS)


@contextlib.contextmanager
def smtp_peer(converse: Callable[[socket.socket, BinaryIO], None]) -> Iterator[int]:
    """A TCP peer on a free port that holds one scripted SMTP conversation."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def serve() -> None:
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            with connection, connection.makefile("rb") as lines:
                converse(connection, lines)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()
        thread.join(GUARD_SECONDS)


def refuse_then_hang_up(connection: socket.socket, lines: BinaryIO) -> None:
    """Answer RCPT with 550 and close, as servers that drop a client after a permanent
    refusal do."""
    connection.sendall(b"220 refusing.test ESMTP\r\n")
    for line in lines:
        command = line.upper()
        if command.startswith(b"RCPT"):
            connection.sendall(b"550 5.1.1 No such mailbox\r\n")
            return
        if command.startswith(b"QUIT"):
            connection.sendall(b"221 Bye\r\n")
            return
        connection.sendall(b"250 OK\r\n")


def accept_then_hang_up(connection: socket.socket, lines: BinaryIO) -> None:
    """Accept the message (250 after DATA), then close instead of answering QUIT: the
    message was delivered all the same."""
    connection.sendall(b"220 accepting.test ESMTP\r\n")
    in_data = False
    for line in lines:
        if in_data:
            if line == b".\r\n":
                connection.sendall(b"250 2.0.0 Queued\r\n")
                in_data = False
            continue
        command = line.upper()
        if command.startswith(b"DATA"):
            connection.sendall(b"354 Go ahead\r\n")
            in_data = True
        elif command.startswith(b"QUIT"):
            return
        else:
            connection.sendall(b"250 OK\r\n")


def test_message_id_is_derived_from_the_job_id() -> None:
    assert message_id("abc-123") == "<abc-123@jobql>"
    assert message_id("abc-123") == message_id("abc-123")
    assert message_id("abc-123") != message_id("abc-124")


# --- create_mail_app ------------------------------------------------------------------------


def test_mail_app_holds_the_settings(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(site_name="Elsewhere", mail_timeout=2.5)

    app = create_mail_app(settings)

    assert app.config["MAIL_SERVER"] == "127.0.0.1"
    assert app.config["MAIL_PORT"] == settings.mail_port
    assert app.config["MAIL_DEFAULT_SENDER"] == "jobql <noreply@jobql.test>"
    assert app.config["MAIL_TIMEOUT"] == 2.5
    assert "mail" in app.extensions


# --- a successful send ----------------------------------------------------------------------


def test_welcome_message_arrives_with_subject_id_sender_and_both_parts(
    mailer: WelcomeMailer, smtp_server: SmtpServer
) -> None:
    job_id = unique()
    address = recipient()

    returned = mailer.send_welcome(job_id, address, "alice_w")

    assert returned == f"<{job_id}@jobql>"
    message = only_message_to(smtp_server, address)
    assert message["Subject"] == "Welcome to Testsite"
    assert message["Message-ID"] == f"<{job_id}@jobql>"
    assert message["From"] == "jobql <noreply@jobql.test>"
    assert message["To"] == address
    plain = text_of(message, "plain")
    html = text_of(message, "html")
    assert "alice_w" in plain
    assert "Testsite" in plain
    assert "alice_w" in html
    assert "<strong>Testsite</strong>" in html


def test_subject_uses_the_configured_site_name(
    make_mailer: Callable[..., WelcomeMailer], smtp_server: SmtpServer
) -> None:
    mailer = make_mailer(site_name="Acme Portal")
    address = recipient()

    mailer.send_welcome(unique(), address, "bob")

    message = only_message_to(smtp_server, address)
    assert message["Subject"] == "Welcome to Acme Portal"
    assert "Acme Portal" in text_of(message, "html")


def test_repeat_send_of_one_job_keeps_its_message_id(
    mailer: WelcomeMailer, smtp_server: SmtpServer
) -> None:
    job_id = unique()
    address = recipient()

    first = mailer.send_welcome(job_id, address, "carol")
    second = mailer.send_welcome(job_id, address, "carol")

    assert first == second == message_id(job_id)
    ids = {message["Message-ID"] for message in smtp_server.handler.to(address)}
    assert ids == {message_id(job_id)}


def test_username_is_html_escaped_in_the_html_part(
    mailer: WelcomeMailer, smtp_server: SmtpServer
) -> None:
    address = recipient()
    username = '<script>alert("x")</script>&co'

    mailer.send_welcome(unique(), address, username)

    message = only_message_to(smtp_server, address)
    html = text_of(message, "html")
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "&amp;co" in html
    # The plain-text part shows the name as typed, not HTML entities.
    assert username in text_of(message, "plain")


def test_non_ascii_username_survives(mailer: WelcomeMailer, smtp_server: SmtpServer) -> None:
    address = recipient()

    mailer.send_welcome(unique(), address, "Zoë Ørsted 山田")

    message = only_message_to(smtp_server, address)
    assert "Zoë Ørsted 山田" in text_of(message, "plain")
    assert "Zoë Ørsted 山田" in text_of(message, "html")


def test_on_accepted_hears_the_message_id_once(mailer: WelcomeMailer) -> None:
    accepted: list[str] = []

    returned = mailer.send_welcome("job-accepted", recipient(), "grace", accepted.append)

    assert accepted == [returned] == [message_id("job-accepted")]


def test_send_restores_the_default_socket_timeout(mailer: WelcomeMailer) -> None:
    before = socket.getdefaulttimeout()

    mailer.send_welcome(unique(), recipient(), "dave")

    assert socket.getdefaulttimeout() == before


# --- refusals and failures ------------------------------------------------------------------


def test_550_recipient_raises_mail_rejected(mailer: WelcomeMailer, smtp_server: SmtpServer) -> None:
    address = recipient(REJECTING_DOMAIN)

    with pytest.raises(MailRejected, match="550"):
        mailer.send_welcome(unique(), address, "erin")

    assert smtp_server.handler.to(address) == []


def test_451_recipient_raises_temporary_failure_then_succeeds(
    mailer: WelcomeMailer, smtp_server: SmtpServer
) -> None:
    address = recipient(DEFERRING_DOMAIN)
    job_id = unique()

    with pytest.raises(MailTemporarilyFailed, match="451"):
        mailer.send_welcome(job_id, address, "frank")
    assert smtp_server.handler.to(address) == []

    assert mailer.send_welcome(job_id, address, "frank") == message_id(job_id)
    message = only_message_to(smtp_server, address)
    assert message["Message-ID"] == message_id(job_id)


def test_rejected_and_temporary_are_distinct() -> None:
    # The worker retries one and not the other, so neither may be a subclass of the other.
    assert not issubclass(MailRejected, MailTemporarilyFailed)
    assert not issubclass(MailTemporarilyFailed, MailRejected)


def test_nothing_listening_raises_temporary_failure(
    make_mailer: Callable[..., WelcomeMailer],
) -> None:
    mailer = make_mailer(mail_port=free_port())

    outcome = send_guarded(mailer, recipient())

    assert isinstance(outcome, MailTemporarilyFailed), outcome


def test_silent_server_times_out_as_temporary_failure(
    make_mailer: Callable[..., WelcomeMailer], silent_server: int
) -> None:
    mailer = make_mailer(mail_port=silent_server, mail_timeout=0.5)

    outcome = send_guarded(mailer, recipient())

    assert isinstance(outcome, MailTemporarilyFailed), outcome
    assert socket.getdefaulttimeout() is None


def test_server_stalling_after_greeting_times_out_as_temporary_failure(
    make_mailer: Callable[..., WelcomeMailer], stalling_server: int
) -> None:
    mailer = make_mailer(mail_port=stalling_server, mail_timeout=0.5)

    outcome = send_guarded(mailer, recipient())

    assert isinstance(outcome, MailTemporarilyFailed), outcome


def test_550_then_hang_up_raises_mail_rejected(make_mailer: Callable[..., WelcomeMailer]) -> None:
    with smtp_peer(refuse_then_hang_up) as port:
        mailer = make_mailer(mail_port=port, mail_timeout=2.0)
        outcome = send_guarded(mailer, recipient())

    assert isinstance(outcome, MailRejected), repr(outcome)


def test_accepted_message_is_sent_even_if_the_server_drops_quit(
    make_mailer: Callable[..., WelcomeMailer],
) -> None:
    accepted: list[str] = []
    with smtp_peer(accept_then_hang_up) as port:
        # With no keepalive the send itself says QUIT.
        mailer = make_mailer(mail_port=port, mail_timeout=2.0, mail_keepalive=0)
        message = mailer.send_welcome("job-quit", recipient(), "Ann", on_accepted=accepted.append)

    assert message == message_id("job-quit")
    assert accepted == [message_id("job-quit")]


def test_send_is_recorded_before_quit_and_a_silent_quit_is_not_waited_out(
    make_mailer: Callable[..., WelcomeMailer],
) -> None:
    heard: list[bytes] = []
    quit_heard = threading.Event()

    def accept_then_ignore_quit(connection: socket.socket, lines: BinaryIO) -> None:
        connection.sendall(b"220 slow-goodbye.test ESMTP\r\n")
        in_data = False
        for line in lines:
            heard.append(line.upper())
            if in_data:
                if line == b".\r\n":
                    connection.sendall(b"250 2.0.0 Queued\r\n")
                    in_data = False
            elif line.upper().startswith(b"DATA"):
                connection.sendall(b"354 Go ahead\r\n")
                in_data = True
            elif line.upper().startswith(b"QUIT"):
                quit_heard.set()  # and never answer it
            else:
                connection.sendall(b"250 OK\r\n")

    recorded_before_quit: list[bool] = []
    with smtp_peer(accept_then_ignore_quit) as port:
        # No keepalive: the send says QUIT itself; the timeout is longer than the guard.
        mailer = make_mailer(mail_port=port, mail_timeout=GUARD_SECONDS * 3, mail_keepalive=0)
        outcome = send_guarded(
            mailer,
            recipient(),
            on_accepted=lambda _: recorded_before_quit.append(not quit_heard.is_set()),
        )

    assert isinstance(outcome, str), outcome
    assert recorded_before_quit == [True]
    assert any(line.startswith(b"QUIT") for line in heard)


# --- one connection for many messages -------------------------------------------------------


def send_each(mailer: WelcomeMailer, count: int) -> list[str]:
    """Send `count` emails; return their recipients."""
    addresses = [recipient() for _ in range(count)]
    for address in addresses:
        mailer.send_welcome(unique(), address, "Ann")
    return addresses


def test_messages_in_a_row_share_one_connection(
    mailer: WelcomeMailer, smtp_server: SmtpServer
) -> None:
    first, second = send_each(mailer, 2)

    peers = smtp_server.handler.peers
    assert peers[first] == peers[second]
    assert peers[first] not in smtp_server.handler.quit_by


def test_close_says_quit(mailer: WelcomeMailer, smtp_server: SmtpServer) -> None:
    [address] = send_each(mailer, 1)

    mailer.close()

    assert smtp_server.handler.peers[address] in smtp_server.handler.quit_by


def test_no_keepalive_opens_and_quits_a_connection_per_message(
    make_mailer: Callable[..., WelcomeMailer], smtp_server: SmtpServer
) -> None:
    first, second = send_each(make_mailer(mail_keepalive=0), 2)

    peers = smtp_server.handler.peers
    assert peers[first] != peers[second]
    assert {peers[first], peers[second]} <= set(smtp_server.handler.quit_by)


def test_connection_idle_past_the_keepalive_is_replaced(
    make_mailer: Callable[..., WelcomeMailer], smtp_server: SmtpServer
) -> None:
    mailer = make_mailer(mail_keepalive=0.2)
    [first] = send_each(mailer, 1)
    time.sleep(0.3)

    [second] = send_each(mailer, 1)

    peers = smtp_server.handler.peers
    assert peers[first] != peers[second]
    assert peers[first] in smtp_server.handler.quit_by


def test_a_connection_carries_at_most_its_message_limit(
    make_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    mailer = WelcomeMailer(
        create_mail_app(make_settings()), keepalive=10, messages_per_connection=2
    )
    try:
        addresses = send_each(mailer, 3)
    finally:
        mailer.close()

    peers = [smtp_server.handler.peers[address] for address in addresses]
    assert peers[0] == peers[1] != peers[2]
    assert peers[0] in smtp_server.handler.quit_by


def test_connection_the_server_timed_out_is_replaced(
    make_mailer: Callable[..., WelcomeMailer],
) -> None:
    server = SmtpServer(idle_timeout=0.5)
    server.start()
    try:
        mailer = make_mailer(mail_port=server.port)
        [first] = send_each(mailer, 1)
        time.sleep(1.5)  # the server hangs up on a connection idle for 0.5 s

        [second] = send_each(mailer, 1)
    finally:
        server.stop()

    assert len(server.handler.to(second)) == 1
    assert server.handler.peers[first] != server.handler.peers[second]


def test_each_thread_sends_over_a_connection_of_its_own(
    mailer: WelcomeMailer, smtp_server: SmtpServer
) -> None:
    sent: list[list[str]] = []

    def send_two_then_close() -> None:
        sent.append(send_each(mailer, 2))
        mailer.close()  # closes this thread's connection, and no other

    threads = [threading.Thread(target=send_two_then_close) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD_SECONDS)

    peers = smtp_server.handler.peers
    assert len(sent) == 2
    assert [len({peers[address] for address in addresses}) for addresses in sent] == [1, 1]
    assert peers[sent[0][0]] != peers[sent[1][0]]
    assert {peers[sent[0][0]], peers[sent[1][0]]} <= set(smtp_server.handler.quit_by)


def test_failed_send_drops_the_connection(mailer: WelcomeMailer, smtp_server: SmtpServer) -> None:
    refused = recipient(REJECTING_DOMAIN)
    with pytest.raises(MailRejected):
        mailer.send_welcome(unique(), refused, "Ann")

    [accepted] = send_each(mailer, 1)

    peers = smtp_server.handler.peers
    assert peers[refused] != peers[accepted]
