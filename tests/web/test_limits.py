"""Front-end admission: connection caps and the client IP (conventions.md, Limits; http.md)."""

from __future__ import annotations

import pytest

from zajel.web.limits import ConnectionCaps, client_ip


def test_total_cap():
    caps = ConnectionCaps(max_total=3, max_per_ip=10)
    assert all(caps.try_acquire(f"10.0.0.{n}") for n in range(3))
    assert caps.try_acquire("10.0.0.99") is False
    assert caps.total == 3
    caps.release("10.0.0.1")
    assert caps.try_acquire("10.0.0.99") is True
    assert caps.total == 3


def test_per_ip_cap():
    caps = ConnectionCaps(max_total=100, max_per_ip=2)
    assert caps.try_acquire("192.0.2.1")
    assert caps.try_acquire("192.0.2.1")
    assert caps.try_acquire("192.0.2.1") is False
    assert caps.try_acquire("192.0.2.2") is True
    assert caps.total == 3
    assert caps.ips() == 2


def test_refusals_count_nothing():
    caps = ConnectionCaps(max_total=1, max_per_ip=1)
    assert caps.try_acquire("a")
    for _ in range(10):
        assert caps.try_acquire("a") is False
        assert caps.try_acquire("b") is False
    assert caps.total == 1
    assert caps.ips() == 1


def test_release_frees_the_slot_and_forgets_idle_ips():
    caps = ConnectionCaps(max_total=10, max_per_ip=2)
    for _ in range(2):
        assert caps.try_acquire("a")
    assert caps.try_acquire("b")
    caps.release("a")
    assert caps.try_acquire("a")
    caps.release("a")
    caps.release("a")
    caps.release("b")
    assert caps.total == 0
    assert caps.ips() == 0  # memory follows the open connections


def test_many_ips_come_and_go():
    caps = ConnectionCaps(max_total=10_000, max_per_ip=100)
    ips = [f"10.{n // 256}.{n % 256}.1" for n in range(5_000)]
    for ip in ips:
        assert caps.try_acquire(ip)
    assert caps.ips() == 5_000
    for ip in ips:
        caps.release(ip)
    assert (caps.total, caps.ips()) == (0, 0)


def test_client_ip_is_the_socket_peer_without_a_trusted_proxy():
    headers = {"CF-Connecting-IP": "203.0.113.9", "X-Forwarded-For": "198.51.100.1"}
    assert client_ip("10.0.0.1", headers.items(), None) == "10.0.0.1"
    assert client_ip(None, headers.items(), None) == "unknown"
    assert client_ip("", {}.items(), None) == "unknown"


def test_client_ip_from_cf_connecting_ip():
    headers = {"CF-Connecting-IP": " 203.0.113.9 "}
    assert client_ip("10.0.0.1", headers.items(), "CF-Connecting-IP") == "203.0.113.9"
    assert client_ip("10.0.0.1", {}.items(), "CF-Connecting-IP") == "10.0.0.1"
    assert (
        client_ip("10.0.0.1", {"CF-Connecting-IP": "  "}.items(), "CF-Connecting-IP") == "10.0.0.1"
    )
    # Only the trusted header counts.
    assert client_ip("10.0.0.1", {"X-Forwarded-For": "1.2.3.4"}.items(), "CF-Connecting-IP") == (
        "10.0.0.1"
    )


@pytest.mark.parametrize(
    ("value", "ip"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("1.1.1.1, 203.0.113.9", "203.0.113.9"),  # the left part is the client's own claim
        ("spoofed, 1.1.1.1,203.0.113.9 ", "203.0.113.9"),
        ("203.0.113.9, ", "203.0.113.9"),
        ("2001:db8::1", "2001:db8::1"),
        (" , ,", "10.0.0.1"),
        ("", "10.0.0.1"),
    ],
)
def test_client_ip_from_x_forwarded_for_takes_the_right_most_hop(value, ip):
    assert client_ip("10.0.0.1", {"X-Forwarded-For": value}.items(), "X-Forwarded-For") == ip


def test_client_ip_is_cut_short():
    long_value = "x" * 1_000
    assert client_ip(None, {"CF-Connecting-IP": long_value}.items(), "CF-Connecting-IP") == "x" * 64


def test_client_ip_header_names_match_case_insensitively():
    # Frameworks title-case names ("Cf-Connecting-Ip"); the setting spells them as specified.
    headers = [("Cf-Connecting-Ip", "203.0.113.7")]
    assert client_ip("10.0.0.1", headers, "CF-Connecting-IP") == "203.0.113.7"


def test_client_ip_joins_repeated_x_forwarded_for_headers():
    # A client-sent X-Forwarded-For line comes first; the proxy's own hop is the right-most.
    headers = [("X-Forwarded-For", "6.6.6.6"), ("x-forwarded-for", "203.0.113.9")]
    assert client_ip("10.0.0.1", headers, "X-Forwarded-For") == "203.0.113.9"
