"""Transport URLs: parsing, options, and passwords that never show."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queuekit import ConfigurationError
from queuekit.spi.urls import Host, TransportURL, redact

SECRET = "hunter2-Zq9"


def test_a_full_url_parses_into_its_parts() -> None:
    url = TransportURL.parse(f"AMQP://guest:{SECRET}@rabbit:5672/vhost?heartbeat=10&ssl=on")
    assert url.scheme == "amqp"
    assert url.username == "guest"
    assert url.password == SECRET
    assert url.hosts == (Host("rabbit", 5672),)
    assert url.host == Host("rabbit", 5672)
    assert url.path == "vhost"
    assert url.option("heartbeat") == "10"
    assert url.option("missing", "d") == "d"
    assert url.flag("ssl") is True
    assert url.flag("absent") is False
    assert url.flag("absent", default=True) is True


def test_several_hosts_for_failover_keep_their_order() -> None:
    url = TransportURL.parse("stomp://u:p@a:61613,b,c:61614/")
    assert url.hosts == (Host("a", 61613), Host("b"), Host("c", 61614))
    assert url.host == Host("a", 61613)
    assert str(url) == "stomp://u:***@a:61613,b,c:61614"


def test_ipv6_hosts_keep_their_brackets_when_rendered() -> None:
    url = TransportURL.parse("zmq://[::1]:5555,[fe80::1%25eth0]/")
    assert url.hosts == (Host("::1", 5555), Host("fe80::1%eth0"))
    assert url.render() == "zmq://[::1]:5555,[fe80::1%eth0]"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("sqlite:///jobs.db", "jobs.db"),
        ("sqlite:////var/lib/app/jobs.db", "/var/lib/app/jobs.db"),
        ("sqlite:///:memory:", ":memory:"),
        ("sqlite:///dir%20with%20space/q.db?lease=5", "dir with space/q.db"),
    ],
)
def test_sqlite_paths(text: str, path: str) -> None:
    url = TransportURL.parse(text)
    assert url.scheme == "sqlite"
    assert url.hosts == ()
    assert url.path == path
    assert TransportURL.parse(url.render(reveal=True)).path == path


def test_a_url_without_host_has_no_host() -> None:
    with pytest.raises(ConfigurationError, match="names no host"):
        _ = TransportURL.parse("sqlite:///x.db").host


def test_percent_encoded_credentials_are_decoded_and_round_trip() -> None:
    url = TransportURL.parse("amqp://us%40er:p%3Ass%2Fw%40rd@h/")
    assert (url.username, url.password) == ("us@er", "p:ss/w@rd")
    assert TransportURL.parse(url.render(reveal=True)).password == "p:ss/w@rd"


def test_password_is_hidden_in_str_repr_and_redacted() -> None:
    url = TransportURL.parse(f"amqp://guest:{SECRET}@rabbit/?token=tok-Zq9&heartbeat=5")
    for shown in (str(url), repr(url), url.redacted(), f"{url}", f"{url!r}"):
        assert SECRET not in shown
        assert "tok-Zq9" not in shown
        assert "***" in shown
    assert "heartbeat=5" in url.redacted()
    assert SECRET in url.render(reveal=True)


@pytest.mark.parametrize(
    "text",
    [
        f"could not connect to amqp://guest:{SECRET}@localhost:5672/ (refused)",
        f"tried stomp://a:{SECRET}@x:1,y:2/ then amqps://b:{SECRET}@z/",
        f"GET /q?password={SECRET}&x=1",
        f"xmpp://bot:{SECRET}@chat.example/?secret={SECRET}",
    ],
)
def test_redact_hides_passwords_in_free_text(text: str) -> None:
    hidden = redact(text)
    assert SECRET not in hidden
    assert "***" in hidden


def test_redact_leaves_text_without_secrets_alone() -> None:
    text = "connected to amqp://rabbit:5672/ and sqlite:///jobs.db at 12:30"
    assert redact(text) == text
    user_only = "job store mysql+pymysql://root@127.0.0.1:3306/test"  # no password to hide
    assert redact(user_only) == user_only


@pytest.mark.parametrize(
    "text",
    [
        f"amqp://guest:{SECRET}@host:notaport/",
        f"amqp://guest:{SECRET}@host:5672,[::1]:x/",
        "not a url at all",
    ],
)
def test_parse_errors_never_contain_the_password(text: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        TransportURL.parse(text)
    assert SECRET not in str(caught.value)


def test_a_bad_flag_value_is_an_error_without_the_password() -> None:
    url = TransportURL.parse(f"amqp://guest:{SECRET}@h/?ssl=maybe")
    with pytest.raises(ConfigurationError, match="ssl='maybe'") as caught:
        url.flag("ssl")
    assert SECRET not in str(caught.value)


def test_numeric_options_are_read_one_way_and_refused_naming_the_option() -> None:
    url = TransportURL.parse(f"amqp://guest:{SECRET}@h/?timeout=2.5&hwm=0&size=10&bad=1.5")
    assert url.number("timeout", 30.0) == 2.5
    assert url.number("absent", 30.0) == 30.0
    assert url.integer("size", 1) == 10
    assert url.integer("hwm", 1, allow_zero=True) == 0
    for read in (
        lambda: url.integer("hwm", 1),  # zero where it must be positive
        lambda: url.integer("bad", 1),  # a whole number is wanted
        lambda: url.number("hwm", 1.0),
    ):
        with pytest.raises(ConfigurationError, match=r"option (hwm|bad)=") as caught:
            read()
        assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [f"guest:{SECRET}@localhost:5672", f"amqp://guest:pa/{SECRET}@host:5672/"],
    ids=["no-scheme", "slash-in-password"],
)
def test_a_mistyped_url_does_not_leak_the_password(text: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        TransportURL.parse(text)
    assert SECRET not in str(caught.value)


passwords = st.text(min_size=1, max_size=20).map(lambda s: "Zq9" + s)
users = st.text(alphabet="abcdefghij", min_size=1, max_size=8)


@settings(derandomize=True, database=None, deadline=None, max_examples=150)
@given(users, passwords)
def test_any_password_round_trips_and_never_shows(user: str, password: str) -> None:
    from urllib.parse import quote

    text = f"amqp://{user}:{quote(password, safe='')}@broker.example:5672/v"
    url = TransportURL.parse(text)
    assert url.password == password
    assert TransportURL.parse(url.render(reveal=True)) == url
    for shown in (str(url), repr(url), url.redacted(), redact(text), redact(f"x {text} y")):
        assert "Zq9" not in shown
