"""The SRV DNS client's wire format and ordering: query encoding, answer parsing (with
compression pointers), resolv.conf and nameserver parsing, RFC 2782 order."""

from __future__ import annotations

import random
import struct
from collections import Counter
from pathlib import Path

import pytest

from homeserver.net.dns import (
    DnsError,
    SrvRecord,
    build_query,
    encode_name,
    nameserver_from_resolv_conf,
    order_srv,
    parse_nameserver,
    parse_response,
    read_name,
)


def test_encode_name() -> None:
    assert encode_name("_matrix-fed._tcp.hs.test") == b"\x0b_matrix-fed\x04_tcp\x02hs\x04test\x00"
    assert encode_name("example.org.") == b"\x07example\x03org\x00"
    with pytest.raises(DnsError):
        encode_name("a.." + "b")
    with pytest.raises(DnsError):
        encode_name("x" * 64 + ".org")


def test_build_query() -> None:
    q = build_query(0xBEEF, "_matrix-fed._tcp.hs.test")
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", q[:12])
    assert (qid, flags, qd, an, ns, ar) == (0xBEEF, 0x0100, 1, 0, 0, 1)  # RD set, one OPT record
    name, pos = read_name(q, 12)
    assert name == "_matrix-fed._tcp.hs.test"
    assert struct.unpack("!HH", q[pos : pos + 4]) == (33, 1)  # SRV, IN
    opt = q[pos + 4 :]
    assert opt[0] == 0 and struct.unpack("!HH", opt[1:5]) == (41, 4096)


def srv_rdata(priority: int, weight: int, port: int, target: bytes) -> bytes:
    return struct.pack("!HHH", priority, weight, port) + target


def rr(name: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return name + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def test_parse_response_with_compression() -> None:
    question = encode_name("_matrix-fed._tcp.hs.test")
    header = struct.pack("!HHHHHH", 7, 0x8180, 1, 3, 0, 0)
    msg = header + question + struct.pack("!HH", 33, 1)
    to_question = b"\xc0\x0c"  # pointer to offset 12, the question's name
    # offset of "hs.test" inside the question: 12 + len("\x0b_matrix-fed\x04_tcp")
    to_hs_test = struct.pack("!H", 0xC000 | (12 + 1 + 11 + 1 + 4))
    # 1st: target "a" + pointer to "hs.test" (label then pointer)
    msg += rr(to_question, 33, 300, srv_rdata(10, 5, 8448, b"\x01a" + to_hs_test))
    # a CNAME in the answer section is skipped
    msg += rr(to_question, 5, 300, b"\x01b" + to_hs_test)
    # 2nd: target fully uncompressed
    msg += rr(to_question, 33, 60, srv_rdata(20, 0, 443, encode_name("fed.example.org")))
    r = parse_response(msg)
    assert r.query_id == 7 and r.rcode == 0 and not r.truncated
    assert r.question == "_matrix-fed._tcp.hs.test"
    assert r.records == [
        SrvRecord(10, 5, 8448, "a.hs.test", 300),
        SrvRecord(20, 0, 443, "fed.example.org", 60),
    ]


def test_parse_response_rcode_truncation_and_dot_target() -> None:
    question = encode_name("_matrix._tcp.x.test") + struct.pack("!HH", 33, 1)
    nx = struct.pack("!HHHHHH", 1, 0x8183, 1, 0, 0, 0) + question
    assert parse_response(nx).rcode == 3
    tc = struct.pack("!HHHHHH", 2, 0x8380, 1, 0, 0, 0) + question
    assert parse_response(tc).truncated
    # target "." means "no service here": not a usable record
    dot = struct.pack("!HHHHHH", 3, 0x8180, 1, 1, 0, 0) + question
    dot += rr(b"\xc0\x0c", 33, 60, srv_rdata(0, 0, 0, b"\x00"))
    assert parse_response(dot).records == []


def test_parse_response_rejects_malformed() -> None:
    question = encode_name("a.test") + struct.pack("!HH", 33, 1)
    with pytest.raises(DnsError):
        parse_response(b"\x00\x01")
    with pytest.raises(DnsError):  # a query, not a response
        parse_response(struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + question)
    loop = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\xc0\x0c"
    with pytest.raises(DnsError):  # a pointer to itself
        parse_response(loop)
    cut = struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0) + question + b"\xc0\x0c" + struct.pack("!HHIH", 33, 1, 5, 40)
    with pytest.raises(DnsError):  # rdlength past the end
        parse_response(cut)


def test_order_by_priority_then_weight() -> None:
    records = [
        SrvRecord(20, 0, 3, "c", 60),
        SrvRecord(10, 1, 1, "a", 60),
        SrvRecord(10, 9, 2, "b", 60),
        SrvRecord(5, 0, 4, "first", 60),
    ]
    rng = random.Random(1)
    firsts: Counter[str] = Counter()
    for _ in range(2000):
        ordered = order_srv(records, rng)
        assert ordered[0].target == "first"
        assert {r.target for r in ordered[1:3]} == {"a", "b"}
        assert ordered[3].target == "c"
        firsts[ordered[1].target] += 1
    # weight 9 against weight 1, RFC 2782's draw from 0..sum inclusive: "b" first 9/11 of the time
    assert 0.76 < firsts["b"] / 2000 < 0.88
    assert order_srv([]) == []


def test_order_zero_weights_all_kept() -> None:
    records = [SrvRecord(1, 0, p, f"t{p}", 60) for p in range(5)]
    assert sorted(r.port for r in order_srv(records, random.Random(3))) == list(range(5))


def test_parse_nameserver() -> None:
    assert parse_nameserver("10.0.0.1") == ("10.0.0.1", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("[::1]:5300") == ("::1", 5300)
    assert parse_nameserver("fe80::1") == ("fe80::1", 53)
    for bad in ("", "host:", "host:0", "host:70000", "[::1"):
        with pytest.raises(ValueError):
            parse_nameserver(bad)


def test_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch example.org\nnameserver 192.0.2.53 # primary\nnameserver 192.0.2.54\n")
    assert nameserver_from_resolv_conf(str(conf)) == ("192.0.2.53", 53)
    conf.write_text("nameserver fe80::1%eth0\n")
    assert nameserver_from_resolv_conf(str(conf)) == ("fe80::1", 53)
    assert nameserver_from_resolv_conf(str(tmp_path / "missing")) == ("127.0.0.1", 53)
