"""Checks of caller input: what passes, what is refused, and how the refusal looks."""

from __future__ import annotations

import pytest

from jobql.errors import ApiError, BadUserInput
from jobql.kinds.avatar import checked_avatar_options
from jobql.kinds.welcome_email import USERNAME_MAX, checked_email, checked_username


def assert_bad_input(raised: pytest.ExceptionInfo[BadUserInput], field: str) -> None:
    assert isinstance(raised.value, ApiError)
    assert raised.value.extensions["code"] == "BAD_USER_INPUT"
    assert raised.value.extensions["field"] == field
    assert str(raised.value)


# --- email ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normalized"),
    [
        ("user@example.com", "user@example.com"),
        ("User@Example.COM", "User@example.com"),
        ("first.last+tag@Sub.Example.org", "first.last+tag@sub.example.org"),
        ("zoë@exämple.com", "zoë@exämple.com"),
        ("user@EXÄMPLE.com", "user@exämple.com"),
    ],
)
def test_valid_email_is_normalized(given: str, normalized: str) -> None:
    assert checked_email(given) == normalized


def test_no_dns_look_up() -> None:
    # The domain does not exist; a deliverability check would refuse it.
    assert checked_email("user@no-such-domain-jobql.com") == "user@no-such-domain-jobql.com"


@pytest.mark.parametrize(
    "email",
    [
        "",
        "user",
        "@example.com",
        "user@",
        "user@@example.com",
        "user@example",
        "user @example.com",
        "user@exa mple.com",
        "user..dots@example.com",
        ".user@example.com",
        "user@-example.com",
        "Name <user@example.com>",
        "a@b@example.com",
        f"user@{'a' * 64}.com",
        f"{'x' * 64}@{'a' * 60}.{'b' * 60}.{'c' * 60}.{'d' * 60}.com",
    ],
)
def test_invalid_email_is_bad_user_input(email: str) -> None:
    with pytest.raises(BadUserInput) as raised:
        checked_email(email)
    assert_bad_input(raised, "email")


@pytest.mark.parametrize(
    "email",
    [
        "user@example.com\r\nBcc: victim@example.com",
        "user@example.com\nBcc: victim@example.com",
        "user@example.com\r",
        "user\r@example.com",
        "user@example.com\x00",
        "us\x00er@example.com",
        "user@example.com\t",
        "user@example.com\u2028",
    ],
)
def test_control_characters_in_email_are_refused(email: str) -> None:
    with pytest.raises(BadUserInput) as raised:
        checked_email(email)
    assert_bad_input(raised, "email")
    assert "\n" not in str(raised.value).split(":", 1)[0]


# --- username ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "username",
    ["a", "x" * USERNAME_MAX, "Ada Lovelace", "Zoë", "名前", "Ünïcödé ñame", "Владимир", "😀" * 64],
)
def test_valid_username_is_returned_unchanged(username: str) -> None:
    assert checked_username(username) == username


def test_username_limit_is_64() -> None:
    assert USERNAME_MAX == 64
    assert checked_username("y" * 64) == "y" * 64


@pytest.mark.parametrize("username", ["", "x" * 65, "😀" * 65])
def test_username_length_is_refused(username: str) -> None:
    with pytest.raises(BadUserInput) as raised:
        checked_username(username)
    assert_bad_input(raised, "username")


@pytest.mark.parametrize(
    "username",
    ["\r", "\n", "\x00", "\t", "Ada\r\nBcc: x@example.com", "Ada\x00", "A\x1b[31m", "A\u2028B"],
)
def test_control_characters_in_username_are_refused(username: str) -> None:
    with pytest.raises(BadUserInput) as raised:
        checked_username(username)
    assert_bad_input(raised, "username")


# --- avatar options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "quality"), [(32, 1), (1024, 100), (32, 100), (1024, 1), (256, 80)]
)
def test_avatar_options_in_bounds(size: int, quality: int) -> None:
    checked_avatar_options(size, quality)  # raises when out of bounds


@pytest.mark.parametrize("size", [31, 1025, 0, -1])
def test_avatar_size_out_of_bounds(size: int) -> None:
    with pytest.raises(BadUserInput) as raised:
        checked_avatar_options(size, 80)
    assert_bad_input(raised, "size")
    assert "32..1024" in str(raised.value)


@pytest.mark.parametrize("quality", [0, 101, -1])
def test_avatar_quality_out_of_bounds(quality: int) -> None:
    with pytest.raises(BadUserInput) as raised:
        checked_avatar_options(256, quality)
    assert_bad_input(raised, "quality")
    assert "1..100" in str(raised.value)


def test_size_is_checked_before_quality() -> None:
    with pytest.raises(BadUserInput) as raised:
        checked_avatar_options(31, 0)
    assert_bad_input(raised, "size")
