"""dnswire under hostile input: any bytes either parse or raise DnsParseError, quickly.

The capture agent feeds dnswire whatever arrives on port 53, so the parser must never raise
anything else (an IndexError would end the capture) and never spend unbounded time or
memory. Random bytes rarely get past the header, so most cases here mutate valid messages:
bit flips, truncations, compression pointers aimed anywhere, splices and absurd counts.
Where dnspython also accepts a mutated message, both must read it the same way.
"""

from __future__ import annotations

import struct
import time

import dns.edns
import dns.message
import dns.name
import dns.rrset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubectl_dnstrace.dnswire import (
    DnsParseError,
    Message,
    answer_texts,
    parse_message,
    parse_question,
    quick_response,
)
from tests.test_dnswire import assert_same_as_dnspython, messages

# One parse of at most 64 KiB takes well under 10 ms here; the bound only catches a loop.
PARSE_BOUND_S = 1.0

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _base_messages():
    query = dns.message.make_query(
        "www.example.com", "A", use_edns=0, options=[dns.edns.GenericOption(65001, b"abc")]
    )
    query.id = 0x2B2B  # fixed, so failing examples replay
    response = dns.message.make_response(query)
    for text in (
        ("www.example.com.", "CNAME", "web.example.com."),
        ("web.example.com.", "A", "10.0.0.1", "10.0.0.2"),
        ("web.example.com.", "AAAA", "2001:db8::1"),
    ):
        response.answer.append(dns.rrset.from_text(text[0], 300, "IN", text[1], *text[2:]))
    response.authority.append(
        dns.rrset.from_text(
            "example.com.", 300, "IN", "SOA", "ns1.example.com. hostmaster.example.com. 1 2 3 4 5"
        )
    )
    for text in (
        ("example.com.", "MX", "10 mail.example.com."),
        ("_sip._tcp.example.com.", "SRV", "0 5 5060 sip.example.com."),
        ("example.com.", "TXT", '"v=spf1 -all" "x y"'),
    ):
        response.additional.append(dns.rrset.from_text(text[0], 300, "IN", text[1], text[2]))
    # The shape quick_response reads: A and AAAA answers owned by a pointer to the question,
    # EDNS; and a negative answer with an SOA in the authority section.
    plain = dns.message.make_query("h1.example.com", "A", use_edns=0)
    plain.id = 0x1F1F
    plain_response = dns.message.make_response(plain)
    plain_response.answer.append(
        dns.rrset.from_text("h1.example.com.", 60, "IN", "A", "10.1.0.1", "10.1.0.2"))
    plain_response.answer.append(
        dns.rrset.from_text("h1.example.com.", 60, "IN", "AAAA", "2001:db8::7"))
    negative = dns.message.make_response(plain)
    negative.set_rcode(3)
    negative.authority.append(dns.rrset.from_text(
        "example.com.", 300, "IN", "SOA", "ns1.example.com. hostmaster.example.com. 1 2 3 4 5"))
    questions = dns.message.Message(id=7)
    for name in ("a.b.c", "x.b.c", "b.c", "y.x.b.c", "."):
        questions.question.append(dns.rrset.RRset(dns.name.from_text(name), 1, 1))
    return [query.to_wire(), response.to_wire(), questions.to_wire(), plain_response.to_wire(want_shuffle=False),
            negative.to_wire()]


def plain_question_end(buf):
    """The offset after a first question of plain labels from offset 12, else 0: where
    ``quick_response`` may be asked (as the capture's question cache asks it)."""
    pos = 12
    try:
        while buf[pos]:
            if buf[pos] > 63:
                return 0
            pos += buf[pos] + 1
    except IndexError:
        return 0
    return pos + 5 if pos + 5 <= len(buf) else 0


BASES = _base_messages()

_INDEX = st.integers(0, 1 << 16)
MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), _INDEX, st.integers(0, 7)),
    st.tuples(st.just("truncate"), _INDEX),
    st.tuples(st.just("byte"), _INDEX, st.integers(0, 255)),
    st.tuples(st.just("pointer"), _INDEX, st.integers(0, 0x3FFF)),
    st.tuples(st.just("splice"), _INDEX, _INDEX, st.integers(1, 24)),
    st.tuples(st.just("delete"), _INDEX, st.integers(1, 8)),
    st.tuples(st.just("count"), st.integers(0, 3), st.integers(0, 0xFFFF)),
)


def mutate(wire, mutations):
    buf = bytearray(wire)
    for op, *args in mutations:
        if not buf:
            break
        at = args[0] % len(buf)
        if op == "flip":
            buf[at] ^= 1 << args[1]
        elif op == "truncate":
            del buf[at:]
        elif op == "byte":
            buf[at] = args[1]
        elif op == "pointer":
            buf[at : at + 2] = struct.pack("!H", 0xC000 | args[1])
        elif op == "splice":
            src = args[1] % len(buf)
            buf[at:at] = buf[src : src + args[2]]
        elif op == "delete":
            del buf[at : at + args[1]]
        elif op == "count" and len(buf) >= 12:
            buf[4 + 2 * args[0] : 6 + 2 * args[0]] = struct.pack("!H", args[1])
    return bytes(buf)


def parse_within_bound(buf):
    """Both entry points: a result or DnsParseError, in bounded time. Returns the Message."""
    started = time.perf_counter()
    try:
        msg = parse_message(buf)
    except DnsParseError as err:
        assert str(err)
        msg = None
    else:
        assert isinstance(msg, Message)
    try:
        lean = parse_message(buf, authority=False)
    except DnsParseError:
        # Stepping over the authority section checks less, never more.
        assert msg is None
    else:
        if msg is not None:
            assert (lean.answers, lean.additional, lean.rcode) == (
                msg.answers,
                msg.additional,
                msg.rcode,
            )
    try:
        head = parse_question(buf)
    except DnsParseError:
        # The fast path reads only the question; it must not refuse what the full parse took.
        assert msg is None
    else:
        assert len(head) == 6
        if msg is not None and msg.questions:
            first = msg.questions[0]
            assert head[2:5] == (first.name, first.qtype, first.qclass)
    qend = plain_question_end(buf)
    quick = quick_response(buf, qend) if qend else None
    if quick is not None:
        # The quick read agrees with the full one wherever it answers at all.
        assert lean_ok(buf) == quick
    assert time.perf_counter() - started < PARSE_BOUND_S
    return msg


def lean_ok(buf):
    msg = parse_message(buf, authority=False)
    return msg.rcode, answer_texts(msg)


def dnspython_reads(buf):
    try:
        return dns.message.from_wire(buf, one_rr_per_rrset=True, ignore_trailing=True)
    except Exception:
        return None


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(buf):
    parse_within_bound(buf)


@FUZZ
@given(
    st.tuples(*[st.integers(0, 0xFFFF)] * 2, *[st.integers(0, 4)] * 4),
    st.binary(max_size=300),
)
def test_random_body_behind_a_plausible_header(head, body):
    parse_within_bound(struct.pack("!HHHHHH", *head) + body)


@FUZZ
@given(
    st.one_of(
        st.sampled_from(BASES),
        messages().map(lambda m: m.to_wire(max_size=65535, want_shuffle=False)),
    ),
    st.lists(MUTATIONS, min_size=1, max_size=4),
)
def test_mutated_messages(wire, mutations):
    buf = mutate(wire, mutations)
    ours = parse_within_bound(buf)
    theirs = dnspython_reads(buf)
    # dnspython reads UPDATE messages (opcode 5) with other rules, so skip those. Otherwise,
    # what dnspython accepts dnswire accepts too, and reads the same way. (The converse does
    # not hold: dnspython validates rdata of types dnswire shows in the generic form.)
    if theirs is not None and len(buf) >= 12 and (buf[2] >> 3) & 0xF != 5:
        assert ours is not None
        assert_same_as_dnspython(buf)


def test_quick_response_reads_the_common_shapes():
    plain, negative = BASES[3], BASES[4]
    qend = plain_question_end(plain)
    assert quick_response(plain, qend) == (0, ["10.1.0.1", "10.1.0.2", "2001:db8::7"])
    assert quick_response(negative, plain_question_end(negative)) == (3, [])
    # Anything else is left to parse_message: a CNAME answer, two questions, a cut message.
    assert quick_response(BASES[1], plain_question_end(BASES[1])) is None
    assert quick_response(BASES[2], plain_question_end(BASES[2])) is None
    assert quick_response(plain[:-3], qend) is None


def test_many_long_names_in_64k_parse_in_bounded_time():
    """The most label work a 64 KiB message can ask for: 255-octet names of 1-octet labels."""
    name = b"\x01x" * 127 + b"\x00"
    record = name + struct.pack("!HHIH", 65280, 1, 0, 0)
    count = (65535 - 12 - len(name) - 4) // len(record)
    buf = struct.pack("!HHHHHH", 1, 0x8180, 1, count, 0, 0) + name + b"\x00\x01\x00\x01"
    buf += record * count
    started = time.perf_counter()
    msg = parse_message(buf)
    assert len(msg.answers) == count
    assert time.perf_counter() - started < 10 * PARSE_BOUND_S


def test_a_64k_run_of_labels_is_refused_in_bounded_time():
    buf = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x01x" * 32000 + b"\x00\x00\x01\x00\x01"
    for parse in (parse_message, parse_question):
        started = time.perf_counter()
        try:
            parse(buf)
        except DnsParseError as err:
            assert "longer than 255 octets" in str(err)
        else:
            raise AssertionError("a 64000-octet name was accepted")
        assert time.perf_counter() - started < PARSE_BOUND_S


def test_absurd_counts_allocate_nothing():
    """65535 records announced in 30 octets: refused before any list is built."""
    buf = struct.pack("!HHHHHH", 1, 0x8180, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF) + bytes(18)
    started = time.perf_counter()
    try:
        parse_message(buf)
    except DnsParseError as err:
        assert "section counts" in str(err)
    else:
        raise AssertionError("absurd counts were accepted")
    assert time.perf_counter() - started < 0.05


def test_many_names_and_many_stray_pointers_stay_linear():
    """Pointers can reach only the first 16 KiB; fill it with small names and the rest of
    64 KiB with owners pointing at distinct zero octets there (each reads as the root)."""
    question = b"\x01a\x00\x00\x01\x00\x01"
    questions = 16000 // len(question)
    zeros = [12 + i * len(question) + k for i in range(questions) for k in (3, 5)]
    record = struct.pack("!HHIH", 65280, 1, 0, 0)
    answers = (65535 - 12 - questions * len(question)) // (2 + len(record))
    buf = struct.pack("!HHHHHH", 1, 0x8180, questions, answers, 0, 0) + question * questions
    buf += b"".join(struct.pack("!H", 0xC000 | zeros[i]) + record for i in range(answers))
    started = time.perf_counter()
    msg = parse_message(buf)
    assert {r.name for r in msg.answers} == {"."}
    assert len(msg.answers) == answers
    assert time.perf_counter() - started < PARSE_BOUND_S
