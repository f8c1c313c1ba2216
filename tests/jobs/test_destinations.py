"""Webhook destinations (issue 32, SSRF): only public unicast addresses, in every spelling, at
submit and again at delivery after DNS. No test here sends traffic anywhere: the checks are
pure and the delivery-time ones use a stub resolver."""

from __future__ import annotations

import ipaddress

import pytest

from aiprod.core.settings import Settings
from aiprod.jobs.destinations import (
    DestinationRefused,
    address_refusal,
    check_webhook_url,
    parse_destination,
    vet,
)

REFUSED = [
    # loopback, in every spelling
    "http://127.0.0.1/h",
    "http://127.1/h",
    "http://2130706433/",
    "http://0x7f.1/",
    "http://0x7f000001/",
    "http://017700000001/",
    "http://0177.0.0.1/",
    "http://127.0.0.1.:8080/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::127.0.0.1]/",
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
    "http://localhost/",
    "http://LOCALHOST.:9000/",
    "http://api.localhost/",
    "http://１２７。０。０。１/",  # full-width digits and dots: IDNA maps them to 127.0.0.1
    # unspecified
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
    # private: RFC 1918, fc00::/7
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://[fd00::1]/",
    "http://[::ffff:192.168.1.1]/",
    # link-local (cloud metadata), fe80::/10
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[::ffff:169.254.169.254]/",
    # CGNAT, multicast, reserved, documentation
    "http://100.64.0.1/",
    "http://100.127.255.254/",
    "http://224.0.0.1/",
    "http://239.255.255.250/",
    "http://[ff02::1]/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://192.0.2.1/",
    # malformed numbers, schemes, control characters and whitespace anywhere
    "http://1.2.3.999/",
    "http://99999999999/",
    "http://[::ffff:zz]/",
    "ftp://example.com/h",
    "file:///etc/passwd",
    "gopher://example.com/",
    "https:///nohost",
    "http://example.com:99999/",
    "http://example.com:0/",
    "http://example.com/h\x00",
    "http://exa\x00mple.com/h",
    "http://example.com/\r\nX-Injected: 1",
    "http://example.com/h\x7f",
    "http://example.com/h\x85",
    "http://example.com/a b",
    "\x00http://example.com/",
]

ACCEPTED = [
    "https://example.com/hook",
    "http://hooks.example.org:8080/a?b=c",
    "https://8.8.8.8/h",
    "https://134744072/h",  # 8.8.8.8 as one number: public, so spelling alone is no reason
    "https://[2606:4700:4700::1111]/h",
    "https://xn--bcher-kva.example/h",
    "https://bücher.example/h",
    "https://user:pw@example.com/h",
]


@pytest.mark.parametrize("url", REFUSED)
def test_refused_at_submit(url: str) -> None:
    with pytest.raises(DestinationRefused, match="webhook_url"):
        check_webhook_url(url)


@pytest.mark.parametrize("url", ACCEPTED)
def test_public_destinations_accepted(url: str) -> None:
    check_webhook_url(url)


def test_spellings_are_read_as_the_address_they_name() -> None:
    for url in ["http://2130706433/", "http://0x7f.1/", "http://017700000001/", "http://127.1/"]:
        assert parse_destination(url).ip == ipaddress.IPv4Address("127.0.0.1")
    d = parse_destination("https://Bücher.Example:8443/x")
    assert (d.host, d.port, d.ip, d.key) == ("xn--bcher-kva.example", 8443, None, d.key)
    assert d.host_header == "xn--bcher-kva.example:8443"
    assert parse_destination("http://[::1]/").host_header == "[::1]"
    assert parse_destination("https://example.com:443/").host_header == "example.com"


def test_the_allow_setting_names_private_networks() -> None:
    allow = Settings(webhook_allow_networks="127.0.0.0/8, 10.20.0.0/16").webhook_allowed_networks
    for url in [
        "http://127.0.0.1:8000/h",
        "http://2130706433/",
        "http://[::ffff:127.0.0.1]/",
        "http://localhost:9/",
        "http://10.20.3.4/",
    ]:
        check_webhook_url(url, allow)
    for url in ["http://10.21.0.1/", "http://[::1]/", "http://169.254.169.254/", "http://0.0.0.0/"]:
        with pytest.raises(DestinationRefused):
            check_webhook_url(url, allow)
    # never multicast or unspecified, whatever is allowed
    everything = Settings(webhook_allow_networks="0.0.0.0/0 ::/0").webhook_allowed_networks
    assert address_refusal(ipaddress.ip_address("224.0.0.1"), everything) == "a multicast address"
    assert address_refusal(ipaddress.ip_address("::"), everything) == "the unspecified address"
    assert address_refusal(ipaddress.ip_address("10.0.0.1"), everything) is None
    assert Settings().webhook_allowed_networks == ()
    with pytest.raises(ValueError, match="AIPROD_WEBHOOK_ALLOW_NETWORKS"):
        Settings(webhook_allow_networks="10.0.0.0/33")


def test_delivery_checks_every_resolved_address() -> None:
    calls: list[tuple[str, int]] = []

    def resolver(answers: list[str]):  # type: ignore[no-untyped-def]
        def resolve(host: str, port: int) -> list[str]:
            calls.append((host, port))
            return answers

        return resolve

    dest = check_webhook_url("https://hooks.example.com/h")  # a name passes at submit
    with pytest.raises(DestinationRefused, match="resolves to 10.0.0.5, a private address"):
        vet(dest, resolver(["10.0.0.5"]))
    with pytest.raises(DestinationRefused, match="169.254.169.254"):  # one bad answer is enough
        vet(dest, resolver(["93.184.215.14", "169.254.169.254"]))
    with pytest.raises(
        DestinationRefused, match=r"::ffff:7f00:1, a loopback address \(127.0.0.1 in IPv6 form\)"
    ):
        vet(dest, resolver(["::ffff:127.0.0.1"]))
    with pytest.raises(DestinationRefused, match="no address"):
        vet(dest, resolver([]))
    assert calls == [("hooks.example.com", 443)] * 4
    assert vet(dest, resolver(["93.184.215.14", "2606:2800::1"])) == ipaddress.ip_address(
        "93.184.215.14"
    )

    def fails(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(DestinationRefused, match="did not resolve"):
        vet(dest, fails)
    # an IP literal is not looked up at all
    assert vet(parse_destination("http://8.8.8.8/"), fails) == ipaddress.ip_address("8.8.8.8")
