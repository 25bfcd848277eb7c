"""The ai-sanitizer's engine (addons/policies/_pii.py): what each detector finds and what
it must not (near misses), overlaps, masking and restoring, streamed text."""

from __future__ import annotations

import ipaddress
import random

import pytest
import regex

from addons.policies._pii import (
    CustomPattern,
    Detector,
    Finding,
    Masker,
    Recovery,
    SanitizerError,
    TextStream,
    expand_kinds,
    iban_ok,
    iter_strings,
    luhn_ok,
    resolve,
)

ALL = Detector(["all_and_credentials"])

OPENAI = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z_-Q7"
ANTHROPIC = "sk-ant-api03-" + "x" * 20 + "Y9_-" + "z" * 20
AWS = "AKIAIOSFODNN7EXAMPLE"
GITHUB = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
GITHUB_PAT = "github_pat_11ABCDEFG0" + "abcdefghijklmnopqrstuvwxyz_0123456789"
GOOGLE = "AIzaSyA-1234567890abcdefghijklmnopqrstu"
SLACK = "xoxb-123456789012-1234567890123-abcdefghijkl"
STRIPE = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM2GgalpmRZmPjDwl6sX3HxVFnA0Xa\n"
    "f1yvL6PFHYcJlIW9RHqT1n8m0aCw==\n"
    "-----END RSA PRIVATE KEY-----"
)


def found(text: str, detector: Detector = ALL) -> list[tuple[str, str]]:
    return [(f.label, text[f.start : f.end]) for f in detector.find(text)]


# ---------------------------------------------------------------- true positives


@pytest.mark.parametrize(
    ("label", "value"),
    [
        ("EMAIL", "john.doe@example.com"),
        ("EMAIL", "j.doe+billing@mail.example.co.uk"),
        ("EMAIL", "o'brien_x@sub-domain.example.org".replace("'", "")),
        ("EMAIL", "zoë@exämple.de"),
        ("PHONE", "+1 (415) 555-2671"),
        ("PHONE", "+14155552671"),
        ("PHONE", "+44 20 7946 0958"),
        ("PHONE", "+33 1 23 45 67 89"),
        ("PHONE", "+49-30-12345678"),
        ("PHONE", "+91 98765 43210"),
        ("PHONE", "(415) 555-2671"),
        ("PHONE", "415-555-2671"),
        ("PHONE", "415.555.2671"),
        ("PHONE", "415 555 2671"),
        ("PHONE", "020 7946 0958"),
        ("PHONE", "07700 900123"),
        ("PHONE", "01 23 45 67 89"),
        ("PHONE", "030 12345678"),
        ("CREDITCARD", "4111111111111111"),
        ("CREDITCARD", "4111 1111 1111 1111"),
        ("CREDITCARD", "4111-1111-1111-1111"),
        ("CREDITCARD", "5555555555554444"),
        ("CREDITCARD", "378282246310005"),  # Amex, 15 digits
        ("CREDITCARD", "4222222222222"),  # 13 digits
        ("CREDITCARD", "6011 1111 1111 1117"),
        ("IBAN", "DE89370400440532013000"),
        ("IBAN", "DE89 3704 0044 0532 0130 00"),
        ("IBAN", "GB82WEST12345698765432"),
        ("IBAN", "GB82 WEST 1234 5698 7654 32"),
        ("IBAN", "FR1420041010050500013M02606"),
        ("IBAN", "NL91ABNA0417164300"),
        ("IP", "192.168.1.1"),
        ("IP", "8.8.8.8"),
        ("IP", "255.255.255.255"),
        ("IP", "2001:db8::8a2e:370:7334"),
        ("IP", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
        ("IP", "fe80::1"),
        ("IP", "::ffff:192.168.1.1"),
        ("SSN", "123-45-6789"),
        ("SSN", "078 05 1120"),
        ("OPENAI_KEY", OPENAI),
        ("OPENAI_KEY", "sk-" + "A" * 48),
        ("ANTHROPIC_KEY", ANTHROPIC),
        ("AWS_ACCESS_KEY", AWS),
        ("AWS_ACCESS_KEY", "ASIAY34FZKBOKMUTVV7A"),
        ("GITHUB_TOKEN", GITHUB),
        ("GITHUB_TOKEN", GITHUB_PAT),
        ("GOOGLE_API_KEY", GOOGLE),
        ("SLACK_TOKEN", SLACK),
        ("STRIPE_KEY", STRIPE),
        ("STRIPE_KEY", "rk_live_" + "51Hc3aBcDeFgHiJkLmNoP"),
        ("JWT", JWT),
        ("PRIVATE_KEY", PEM),
        ("PRIVATE_KEY", PEM.replace("RSA ", "")),
        ("PRIVATE_KEY", PEM.replace("RSA ", "OPENSSH ")),
    ],
)
def test_detects(label: str, value: str) -> None:
    for text in (value, f"see {value} please", f"({value}).", f"{value}\nnext line"):
        assert found(text) == [(label, value)], text


def test_values_that_the_context_names() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    assert found(f"aws_secret_access_key = {secret}") == [("AWS_SECRET_KEY", secret)]
    assert found("Authorization: Bearer abcdefghijklmnop1234567890") == [
        ("BEARER_TOKEN", "abcdefghijklmnop1234567890")
    ]
    assert found('password: "hunter2hunter2"') == [("SECRET", "hunter2hunter2")]
    assert found("api_key=abcd1234efgh;") == [("SECRET", "abcd1234efgh")]


# ------------------------------------------------------------------- near misses


@pytest.mark.parametrize(
    "text",
    [
        # emails
        "john@localhost",
        "@example.com",
        "john@.com",
        "a@b.c",
        # phones: plain long numbers, dates, versions, a NANP area code cannot start with 1
        "5551234567",
        "call 12345",
        "on 2024-01-15 at 12:30",
        "123-456-7890",
        "release 1.2.3.4.5",
        "+12 3",
        # cards: Luhn failures, a 16-digit number in a longer run, an id starting with 1
        "4111111111111112",
        "4111 1111 1111 1112",
        "1234567890123452",
        "order 00004111111111111111",
        "id 4111111111111111999",
        # IBANs: bad check digits, unknown country, wrong length, lower case
        "DE89 3704 0044 0532 0130 01",
        "XX89370400440532013000",
        "DE8937040044053201300",
        "DE89370400440532013000X",
        # IPs: out of range, too many parts, times, MAC addresses, a slice, leading zeros
        "999.1.1.1",
        "10.0.0.256",
        "1.2.3.4.5",
        "12:30:45",
        "00:1A:2B:3C:4D:5E",
        "a[::2]",
        "01.02.03.04",
        # SSNs that cannot be
        "666-12-3456",
        "000-12-3456",
        "900-12-3456",
        "123-00-6789",
        "123-45-0000",
        "123-45 6789",
        # keys too short or of another kind
        "sk-learn is a library",
        "sk-ant-short",
        "AKIA1234",
        "ghp_short",
        "AIzaShort",
        "xoxb-1",
        "sk_live_short",
        "eyJhbGciOiJIUzI1NiJ9 alone",
        "Bearer abc",
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkq\n-----END PUBLIC KEY-----",
        "password: short",
        "max tokens: 4096",
    ],
)
def test_near_misses(text: str) -> None:
    assert found(text) == []


def test_checks() -> None:
    assert luhn_ok("79927398713")
    assert not luhn_ok("79927398710")
    assert iban_ok("DE89 3704 0044 0532 0130 00")
    assert iban_ok("de89370400440532013000")  # the check itself ignores case
    assert not iban_ok("DE89370400440532013001")
    assert not iban_ok("DE8937040044053201300")


# ------------------------------------------------------------------------ kinds


def test_kinds_enable_their_detectors_only() -> None:
    text = f"a@b.io 4111111111111111 {AWS} 10.1.2.3"
    assert found(text, Detector(["email"])) == [("EMAIL", "a@b.io")]
    assert found(text, Detector(["credentials"])) == [("AWS_ACCESS_KEY", AWS)]
    assert [label for label, _ in found(text, Detector(["all"]))] == ["EMAIL", "CREDITCARD", "IP"]
    assert len(found(text, Detector(["all_and_credentials"]))) == 4
    assert expand_kinds(["all"]) == {"email", "phone", "creditcard", "bank", "ip", "ssn", "custom"}


def test_custom_patterns() -> None:
    emp = CustomPattern("employee_id", regex.compile(r"EMP-\d{5}"), 0.5)
    d = Detector(["custom"], [emp])
    assert found("ask EMP-12345 or a@b.io", d) == [("EMPLOYEE_ID", "EMP-12345")]
    # with the built-in kinds too
    d = Detector(["all", "custom"], [emp])
    assert found("ask EMP-12345 or a@b.io", d) == [
        ("EMPLOYEE_ID", "EMP-12345"),
        ("EMAIL", "a@b.io"),
    ]


def test_a_slow_custom_pattern_is_an_error_not_a_stall() -> None:
    slow = CustomPattern("slow", regex.compile(r"(?:x+x+)+y"), 0.5)
    d = Detector(["custom"], [slow], timeout=0.05)
    with pytest.raises(SanitizerError, match="'slow' ran out of time"):
        d.find("x" * 5000)


# --------------------------------------------------------------------- overlaps


def test_overlaps_most_specific_then_longest() -> None:
    # a provider key wins over the generic bearer token and over "api_key = ..."
    assert found(f"Authorization: Bearer {OPENAI}") == [("OPENAI_KEY", OPENAI)]
    assert found(f"api_key = {OPENAI}") == [("OPENAI_KEY", OPENAI)]
    # an Anthropic key is not an OpenAI one
    assert found(ANTHROPIC) == [("ANTHROPIC_KEY", ANTHROPIC)]
    # a custom pattern with a higher score wins over the built-in finding it overlaps
    wide = CustomPattern("ticket", regex.compile(r"ticket for \S+@\S+"), 0.95)
    d = Detector(["email", "custom"], [wide])
    assert found("a ticket for jo@ex.io now", d) == [("TICKET", "ticket for jo@ex.io")]
    low = CustomPattern("ticket", regex.compile(r"ticket for \S+@\S+"), 0.1)
    d = Detector(["email", "custom"], [low])
    assert found("a ticket for jo@ex.io now", d) == [("EMAIL", "jo@ex.io")]


def test_resolve_table() -> None:
    f = Finding
    assert resolve([f(0, 10, "A", 0.5), f(2, 4, "B", 0.9)]) == [f(2, 4, "B", 0.9)]
    assert resolve([f(0, 10, "A", 0.5), f(2, 4, "B", 0.5)]) == [f(0, 10, "A", 0.5)]
    assert resolve([f(5, 8, "B", 0.5), f(0, 3, "A", 0.5), f(2, 6, "C", 0.4)]) == [
        f(0, 3, "A", 0.5),
        f(5, 8, "B", 0.5),
    ]
    many = [f(i * 3, i * 3 + 2, "E", 0.9) for i in range(2000)]
    assert resolve(list(reversed(many))) == many


# ---------------------------------------------------------------------- masking

TEXT = (
    "I am jo@example.com (again: jo@example.com), card 4111 1111 1111 1111, "
    f"IBAN DE89 3704 0044 0532 0130 00, from 203.0.113.9, key {OPENAI}, "
    f"call +44 20 7946 0958, token {JWT}."
)


def test_placeholders_one_per_value_and_counts() -> None:
    m = Masker(ALL)
    masked = m.mask(TEXT)
    assert masked == (
        "I am <EMAIL_1> (again: <EMAIL_1>), card <CREDITCARD_1>, IBAN <IBAN_1>, "
        "from <IP_1>, key <OPENAI_KEY_1>, call <PHONE_1>, token <JWT_1>."
    )
    assert m.counts == {
        "email": 2,
        "creditcard": 1,
        "iban": 1,
        "ip": 1,
        "openai_key": 1,
        "phone": 1,
        "jwt": 1,
    }
    # the same masker numbers on across texts (one request's messages)
    assert m.mask("and bo@example.com, jo@example.com") == "and <EMAIL_2>, <EMAIL_1>"
    assert Recovery(m.originals).recover(masked) == TEXT


def test_placeholders_never_collide_with_the_text() -> None:
    text = "literal <EMAIL_1> and jo@example.com"
    m = Masker(ALL, avoid=text)
    masked = m.mask(text)
    assert masked == "literal <EMAIL_1> and <EMAIL_2>"
    assert Recovery(m.originals).recover(masked) == text


def test_synthetic_values_are_realistic_and_restore() -> None:
    m = Masker(ALL, "synthetic", rng=random.Random(7))
    masked = m.mask(TEXT)
    for original in ("jo@example.com", "4111 1111 1111 1111", OPENAI, JWT, "203.0.113.9"):
        assert original not in masked
    fakes = {m.replacements[v]: v for v in m.replacements}
    by_label = {label: v for label, v in found(masked)}
    # every fake is found again as what it stands for, in the same shape
    assert set(by_label) == {"EMAIL", "CREDITCARD", "IBAN", "IP", "OPENAI_KEY", "PHONE", "JWT"}
    card = by_label["CREDITCARD"]
    assert len(card) == 19 and card[4] == " " and luhn_ok(card.replace(" ", ""))
    assert iban_ok(by_label["IBAN"]) and by_label["IBAN"].startswith("DE")
    assert by_label["EMAIL"].endswith(("@example.com", "@example.org", "@example.net"))
    assert ipaddress.ip_address(by_label["IP"]) in ipaddress.ip_network("192.0.0.0/2")
    assert by_label["OPENAI_KEY"].startswith("sk-proj-")
    assert by_label["PHONE"].startswith("+44 ")
    assert set(fakes) == set(m.originals)
    assert Recovery(m.originals).recover(masked) == TEXT


@pytest.mark.parametrize(
    "value", [AWS, GITHUB, GOOGLE, SLACK, STRIPE, ANTHROPIC, PEM, "123-45-6789"]
)
def test_synthetic_keeps_the_kind(value: str) -> None:
    m = Masker(ALL, "synthetic", rng=random.Random(1))
    fake = m.mask(value)
    assert fake != value
    assert [label for label, _ in found(fake)] == [label for label, _ in found(value)]


def test_output_masker_leaves_the_request_replacements() -> None:
    m = Masker(ALL)
    m.mask("jo@example.com")
    out = m.fork()
    assert out.mask("<EMAIL_1> wrote to al@example.org") == "<EMAIL_1> wrote to <EMAIL_2>"
    assert out.counts == {"email": 1} and m.counts == {"email": 1}
    syn = Masker(ALL, "synthetic", rng=random.Random(3))
    fake = syn.mask("jo@example.com")
    out = syn.fork()
    assert out.mask(f"{fake} is fine") == f"{fake} is fine"  # restored later, not masked


# ---------------------------------------------------------------------- recovery


def test_recovery_split_holds_what_may_begin_a_placeholder() -> None:
    r = Recovery({"<EMAIL_1>": "jo@example.com", "<CREDITCARD_12>": "4111111111111111"})
    assert r.split("hi <EMAIL_1>!") == ("hi jo@example.com!", "")
    assert r.split("hi <EMA") == ("hi ", "<EMA")
    assert r.split("hi <") == ("hi ", "<")
    assert r.split("hi <CREDITCARD_1") == ("hi ", "<CREDITCARD_1")
    assert r.split("hi <X") == ("hi <X", "")
    assert r.split("a <b> <EMAIL_1> <EMAIL_") == ("a <b> jo@example.com ", "<EMAIL_")
    assert not Recovery({})
    assert Recovery({}).split("<EMA") == ("<EMA", "")


def test_fake_values_are_restored_as_whole_words_only() -> None:
    r = Recovery({"192.0.2.5": "10.1.1.1", "alex.lee42@example.com": "jo@x.io"})
    assert (
        r.recover("192.0.2.55 and 192.0.2.5. Or 1192.0.2.5")
        == "192.0.2.55 and 10.1.1.1. Or 1192.0.2.5"
    )
    assert r.recover("<alex.lee42@example.com>") == "<jo@x.io>"
    assert r.recover("xalex.lee42@example.com") == "xalex.lee42@example.com"
    # in a stream, a fake value at the end of a piece waits for what follows it
    assert r.split("at 192.0.2.5") == ("at ", "192.0.2.5")
    assert r.split("at 192.0.2.5.") == ("at ", "192.0.2.5.")
    assert r.split("at 192.0.2.5, ok") == ("at 10.1.1.1, ok", "")
    ts = TextStream(None, r)
    assert ts.feed("at 192.0.2.5") + ts.feed("5 now") + ts.flush() == "at 192.0.2.55 now"
    ts = TextStream(None, r)
    assert ts.feed("at 192.0.2.5") + ts.flush() == "at 10.1.1.1"


def test_collisions_are_checked_on_long_texts_too() -> None:
    filler = "lorem ipsum dolor " * 1000
    text = filler + "see <EMAIL_1> and <EMAIL_2> " + filler + "mail jo@example.com"
    m = Masker(ALL, avoid=text)
    assert m.mask("jo@example.com") == "<EMAIL_3>"
    m = Masker(ALL, avoid=filler + "EMAIL 1")  # the words, not the placeholder
    assert m.mask("jo@example.com") == "<EMAIL_1>"


@pytest.mark.parametrize("step", [1, 2, 3, 5, 11])
def test_text_stream_any_pieces(step: int) -> None:
    m = Masker(ALL)
    masked = m.mask(TEXT)
    r = Recovery(m.originals)
    ts = TextStream(None, r)
    out = [ts.feed(masked[i : i + step]) for i in range(0, len(masked), step)]
    out.append(ts.flush())
    assert "".join(out) == TEXT
    assert not ts.holding


def test_text_stream_masks_the_answer_line_by_line() -> None:
    answer = (
        "Write to jo@example.com or call 415-555-2671.\n"
        "The key is\n" + PEM + "\nand card 4111 1111 1111 1111 is done"
    )
    m = Masker(ALL)
    ts = TextStream(m, None)
    pieces = [ts.feed(answer[i : i + 3]) for i in range(0, len(answer), 3)]
    pieces.append(ts.flush())
    assert "".join(pieces) == (
        "Write to <EMAIL_1> or call <PHONE_1>.\nThe key is\n<PRIVATE_KEY_1>\n"
        "and card <CREDITCARD_1> is done"
    )
    sent = ""
    for p in pieces:  # nothing of a value ever went out, even in part
        sent += p
        assert "jo@ex" not in sent and "MIIE" not in sent and "4111 1111" not in sent


def test_text_stream_long_lines_go_out_before_their_end() -> None:
    ts = TextStream(Masker(ALL), None, line_limit=64)
    text = "word " * 40 + "mail jo@example.com now " + "word " * 40
    pieces = [ts.feed(text[i : i + 4]) for i in range(0, len(text), 4)]
    assert "".join(pieces).startswith("word word")  # sent before the line ended
    pieces.append(ts.flush())
    assert "".join(pieces) == text.replace("jo@example.com", "<EMAIL_1>")
    sent = ""
    for p in pieces:
        sent += p
        assert "jo@" not in sent


# -------------------------------------------------------------------- documents


def test_iter_strings_paths_follow_indexes() -> None:
    chunk = {
        "choices": [
            {
                "index": 1,
                "delta": {
                    "content": "a",
                    "tool_calls": [{"index": 2, "function": {"arguments": "x"}}],
                },
            }
        ]
    }
    paths = {r.path: r.text for r in iter_strings(chunk)}
    assert paths == {
        ("choices", 0, ("#", 1), "delta", "content"): "a",
        ("choices", 0, ("#", 1), "delta", "tool_calls", 0, ("#", 2), "function", "arguments"): "x",
    }
    ref = next(r for r in iter_strings(chunk) if r.text == "x")
    ref.set("y")
    assert chunk["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] == "y"
