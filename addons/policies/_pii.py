"""Finding, masking and restoring sensitive data in text (the ai-sanitizer's engine).

Pure code: no mitmproxy, no I/O. A `Detector` finds personal data and secrets in a text
(emails, phone numbers, payment cards with a Luhn check, IBANs with the mod-97 check,
IP addresses, US social security numbers, the API keys and tokens of the common
providers, a user's own regexes); overlapping findings are resolved, the most specific
(highest score) first, then the longest. A `Masker` replaces what was found with
placeholders (`<EMAIL_1>`) or realistic fake values, one per distinct value, and keeps
the map back to the originals; a `Recovery` puts the originals back into an answer, and
a `TextStream` does it on a text that arrives in pieces (a streamed answer), holding
back the end of a piece that may be the start of a placeholder.
"""

from __future__ import annotations

import bisect
import ipaddress
import random
import string
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import regex

# --------------------------------------------------------------------------- kinds

#: what `anonymize` can name, and the labels (placeholder names) each kind finds
KIND_LABELS: dict[str, tuple[str, ...]] = {
    "email": ("EMAIL",),
    "phone": ("PHONE",),
    "creditcard": ("CREDITCARD",),
    "bank": ("IBAN",),
    "ip": ("IP",),
    "ssn": ("SSN",),
    "credentials": (
        "PRIVATE_KEY",
        "OPENAI_KEY",
        "ANTHROPIC_KEY",
        "AWS_ACCESS_KEY",
        "AWS_SECRET_KEY",
        "GITHUB_TOKEN",
        "GOOGLE_API_KEY",
        "SLACK_TOKEN",
        "STRIPE_KEY",
        "JWT",
        "BEARER_TOKEN",
        "SECRET",
    ),
    "custom": (),  # the custom patterns' own names
}
PII_KINDS = ("email", "phone", "creditcard", "bank", "ip", "ssn")
#: Kong's group names
GROUPS: dict[str, tuple[str, ...]] = {
    "all": (*PII_KINDS, "custom"),
    "all_and_credentials": (*PII_KINDS, "credentials", "custom"),
}
#: Kong's kinds that need a language model (names, places, dates, ...): not in-process
UNSUPPORTED = frozenset(
    {
        "general",
        "date",
        "domain",
        "url",
        "crypto",
        "driverlicense",
        "medical",
        "nationalid",
        "nrp",
        "passport",
    }
)


def expand_kinds(names: Iterable[str]) -> frozenset[str]:
    """The kinds that `anonymize` enables (groups expanded)."""
    out: set[str] = set()
    for name in names:
        out.update(GROUPS.get(name, (name,)))
    return frozenset(out)


class SanitizerError(Exception):
    """The text could not be scanned (a custom pattern ran out of time)."""


# ------------------------------------------------------------------------ checks


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a card number (digits only)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _luhn_digit(partial: str) -> str:
    """The check digit that makes `partial` + digit pass Luhn."""
    for d in "0123456789":
        if luhn_ok(partial + d):
            return d
    raise AssertionError("unreachable")


#: IBAN length by country (ISO 13616 registry)
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27,
    "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def _iban_number(iban: str) -> int:
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved))


def iban_ok(text: str) -> bool:
    """Whether `text` (spaces allowed) is an IBAN: known country, its length, mod 97."""
    iban = text.replace(" ", "").upper()
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban[2:4].isdigit():
        return False
    if not all(c in _ALNUM_UPPER for c in iban):
        return False
    return _iban_number(iban) % 97 == 1


_ALNUM_UPPER = frozenset(string.ascii_uppercase + string.digits)


# ---------------------------------------------------------------------- detectors


@dataclass(frozen=True, slots=True)
class Finding:
    start: int
    end: int
    label: str
    score: float


@dataclass(frozen=True, slots=True)
class _Rule:
    label: str
    score: float
    pattern: Any  # a compiled `regex` pattern
    group: int = 0  # the part of the match that is the secret
    check: Callable[[str], bool] | None = None
    hint: Callable[[str, str], bool] | None = None  # (text, lowered text): may match?
    custom: bool = False


def _has_digit(text: str, low: str) -> bool:
    return _DIGIT.search(text) is not None


_DIGIT = regex.compile(r"\d")


def _has(*needles: str, lower: bool = False) -> Callable[[str, str], bool]:
    def hint(text: str, low: str) -> bool:
        hay = low if lower else text
        return any(n in hay for n in needles)

    return hint


def _c(pattern: str) -> Any:
    return regex.compile(pattern, regex.VERSION0)


def _digits(s: str) -> str:
    return "".join(c for c in s if "0" <= c <= "9")


def _phone_intl(s: str) -> bool:
    return 8 <= len(_digits(s)) <= 15


def _phone_nanp(s: str) -> bool:
    return _digits(s)[0] in "23456789"


def _phone_trunk(s: str) -> bool:
    return 9 <= len(_digits(s)) <= 12


def _card(s: str) -> bool:
    d = _digits(s)
    return 13 <= len(d) <= 19 and luhn_ok(d)


def _ipv4(s: str) -> bool:
    try:
        ipaddress.IPv4Address(s)
    except ValueError:
        return False
    return True


def _ipv6(s: str) -> bool:
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    # "::1", "::2" (a Python slice): too little to be anyone's address
    return sum(1 for g in s.split(":") if g) >= 2


def _ssn(s: str) -> bool:
    d = _digits(s)
    area, group, serial = d[:3], d[3:5], d[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


# No pattern crosses a line break (but the PEM block): a streamed answer is masked line
# by line (TextStream).
_RULES: dict[str, list[_Rule]] = {
    "email": [
        _Rule(
            "EMAIL",
            0.9,
            _c(
                r"(?<![\w.%+-])[\p{L}\p{N}_%+-](?:[\p{L}\p{N}._%+-]{0,62}[\p{L}\p{N}_%+-])?"
                r"@(?:[\p{L}\p{N}](?:[\p{L}\p{N}-]{0,61}[\p{L}\p{N}])?\.)+\p{L}{2,24}(?![\w-])"
            ),
            hint=_has("@"),
        )
    ],
    "phone": [
        # international: +CC then groups (+1 (415) 555-2671, +44 20 7946 0958, +14155552671)
        _Rule(
            "PHONE",
            0.6,
            _c(r"(?<![\w+])\+[1-9]\d{0,2}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,4})){1,6}(?![ .-]?\d|\w)"),
            check=_phone_intl,
            hint=_has("+"),
        ),
        # North American: (415) 555-2671, 415-555-2671, 415.555.2671, 415 555 2671
        _Rule(
            "PHONE",
            0.6,
            _c(
                r"(?<![\w+])(?<!\d[ .-])(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}"
                r"(?![ .-]?\d|\w)"
            ),
            check=_phone_nanp,
            hint=_has_digit,
        ),
        # national with a trunk 0: 020 7946 0958, 07700 900123, 01 23 45 67 89, 030 1234567
        _Rule(
            "PHONE",
            0.6,
            _c(r"(?<![\w+])(?<!\d[ .-])0[1-9]\d{0,3}(?:[ -]\d{2,8}){1,4}(?![ .-]?\d|\w)"),
            check=_phone_trunk,
            hint=_has_digit,
        ),
    ],
    "creditcard": [
        _Rule(
            "CREDITCARD",
            0.95,
            _c(r"(?<![\w-])(?<!\d[ -])[2-6]\d(?:[ -]?\d){11,17}(?![ -]?\d|\w)"),
            check=_card,
            hint=_has_digit,
        )
    ],
    "ip": [
        _Rule(
            "IP",
            0.85,
            _c(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?!\.?\d|\w)"),
            check=_ipv4,
            hint=_has("."),
        ),
        _Rule(
            "IP",
            0.85,
            _c(
                r"(?<![\w:.])(?=[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:)[0-9A-Fa-f:]{2,39}"
                r"(?:\d{1,3}(?:\.\d{1,3}){3})?(?![\w:]|\.\d)"
            ),
            check=_ipv6,
            hint=_has(":"),
        ),
    ],
    "ssn": [
        _Rule(
            "SSN",
            0.7,
            _c(r"(?<![\w-])\d{3}([- ])\d{2}\1\d{4}(?![\w-])"),
            check=_ssn,
            hint=_has_digit,
        )
    ],
    "credentials": [
        _Rule(
            "PRIVATE_KEY",
            1.0,
            _c(
                r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]{1,16384}?"
                r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
            ),
            hint=_has("-----BEGIN"),
        ),
        _Rule(
            "ANTHROPIC_KEY",
            0.99,
            _c(r"(?<![\w-])sk-ant-[A-Za-z0-9_-]{20,}(?![\w-])"),
            hint=_has("sk-ant-"),
        ),
        _Rule(
            "OPENAI_KEY",
            0.98,
            _c(r"(?<![\w-])sk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}(?![\w-])"),
            hint=_has("sk-"),
        ),
        _Rule(
            "AWS_ACCESS_KEY",
            0.98,
            _c(r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"),
            hint=_has("AKIA", "ASIA"),
        ),
        _Rule(
            "AWS_SECRET_KEY",
            0.9,
            _c(
                r"(?i:aws_?secret_?access_?key|secret_?access_?key)[\"']?\s*[:=]\s*[\"']?"
                r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"
            ),
            group=1,
            hint=_has("secret", lower=True),
        ),
        _Rule(
            "GITHUB_TOKEN",
            0.98,
            _c(
                r"(?<![\w-])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})(?!\w)"
            ),
            hint=_has("gh", "github_pat_"),
        ),
        _Rule(
            "GOOGLE_API_KEY",
            0.98,
            _c(r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])"),
            hint=_has("AIza"),
        ),
        _Rule(
            "SLACK_TOKEN",
            0.98,
            _c(r"(?<![\w-])xox[abposr]-[0-9A-Za-z-]{10,}(?![\w-])"),
            hint=_has("xox"),
        ),
        _Rule(
            "STRIPE_KEY",
            0.98,
            _c(r"(?<![\w-])(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,}(?!\w)"),
            hint=_has("_live_", "_test_"),
        ),
        _Rule(
            "JWT",
            0.95,
            _c(r"(?<![\w-])eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*(?![\w-])"),
            hint=_has("eyJ"),
        ),
        _Rule(
            "BEARER_TOKEN",
            0.8,
            _c(r"(?i:\bbearer)[ \t]+([A-Za-z0-9._~+/-]{16,}=*)(?![\w.~+/=-])"),
            group=1,
            hint=_has("bearer", lower=True),
        ),
        # a value given to a key, secret, token or password (api_key = "...", password: ...)
        _Rule(
            "SECRET",
            0.75,
            _c(
                r"(?i:\b(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|"
                r"token|password|passwd|pwd))[\"']?[ \t]*[:=][ \t]*[\"']?([^\s\"',;]{8,})"
            ),
            group=1,
            hint=_has("key", "secret", "token", "pass", "pwd", lower=True),
        ),
    ],
}

_IBAN_START = _c(r"(?<![A-Za-z0-9])([A-Z]{2})(\d{2})(?=[ ]?[A-Z0-9])")


def _find_ibans(text: str) -> Iterator[tuple[int, int]]:
    """IBANs: the country's length of letters and digits, single spaces allowed."""
    for m in _IBAN_START.finditer(text):
        length = IBAN_LENGTHS.get(m.group(1))
        if length is None:
            continue
        i, n, end = m.start(), 0, len(text)
        last = i
        while i < end and n < length:
            ch = text[i]
            if ch in _ALNUM_UPPER:
                n += 1
                last = i + 1
            elif not (ch == " " and n % 4 == 0 and n and i + 1 < end and text[i + 1] != " "):
                break
            i += 1
        if n != length:
            continue
        if last < end and (text[last].isalnum() or text[last] == "_"):
            continue  # part of a longer word
        if iban_ok(text[m.start() : last]):
            yield m.start(), last


@dataclass(frozen=True, slots=True)
class CustomPattern:
    """A user's pattern (`custom_patterns`): its name is the placeholder's."""

    name: str
    pattern: Any  # compiled `regex`
    score: float = 0.5


class Detector:
    """Finds the enabled kinds in a text."""

    def __init__(
        self,
        kinds: Iterable[str],
        custom: Sequence[CustomPattern] = (),
        timeout: float = 0.5,
    ) -> None:
        enabled = expand_kinds(kinds)
        self.kinds = enabled
        self.timeout = timeout  # seconds the custom patterns may take per scan
        self._rules: list[_Rule] = [r for k in sorted(enabled) for r in _RULES.get(k, ())]
        self._iban = "bank" in enabled
        if "custom" in enabled:
            self._rules += [_Rule(c.name.upper(), c.score, c.pattern, custom=True) for c in custom]

    def find(
        self, text: str, deadline: float | None = None, concurrent: bool = False
    ) -> list[Finding]:
        """What the text holds, without overlaps, in order. Raises SanitizerError when
        the custom patterns run past `deadline` (a `time.monotonic()` instant)."""
        if not text:
            return []
        low = ""
        found: list[Finding] = []
        for rule in self._rules:
            if rule.hint is not None:
                if not low:
                    low = text.lower()
                if not rule.hint(text, low):
                    continue
            if rule.custom:
                if deadline is None:
                    deadline = time.monotonic() + self.timeout
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SanitizerError(f"custom pattern {rule.label.lower()!r} ran out of time")
                try:
                    matches = list(rule.pattern.finditer(text, timeout=left, concurrent=concurrent))
                except TimeoutError:
                    raise SanitizerError(
                        f"custom pattern {rule.label.lower()!r} ran out of time"
                    ) from None
            else:
                matches = rule.pattern.finditer(text, concurrent=concurrent)
            for m in matches:
                start, end = m.span(rule.group)
                if start >= end:
                    continue
                if rule.check is not None and not rule.check(text[start:end]):
                    continue
                found.append(Finding(start, end, rule.label, rule.score))
        if self._iban and _IBAN_START.search(text):
            found += [Finding(s, e, "IBAN", 0.95) for s, e in _find_ibans(text)]
        return resolve(found)


def resolve(found: list[Finding]) -> list[Finding]:
    """Overlaps resolved: the highest score wins, then the longest, then the first."""
    if len(found) < 2:
        return found
    starts: list[int] = []
    chosen: list[Finding] = []  # by start, never overlapping
    for f in sorted(found, key=lambda f: (-f.score, f.start - f.end, f.start)):
        at = bisect.bisect_left(starts, f.start)
        if at > 0 and chosen[at - 1].end > f.start:
            continue
        if at < len(chosen) and chosen[at].start < f.end:
            continue
        starts.insert(at, f.start)
        chosen.insert(at, f)
    return chosen


# ------------------------------------------------------------------------ masking

_FIRST = ("alex", "sam", "jordan", "taylor", "casey", "morgan", "riley", "jamie", "robin", "drew")
_LAST = ("smith", "lee", "garcia", "martin", "brown", "wilson", "clark", "lopez", "young", "hall")


class Masker:
    """Replaces findings, one replacement per distinct value, and remembers them.

    `redact_type` "placeholder" gives `<LABEL_N>`; "synthetic" a fake value of the same
    kind and shape (a Luhn-valid card, an IBAN with valid check digits, an address in
    the documentation ranges, a key with its provider's prefix). A replacement never
    equals text found in `avoid` (the request's own text), so restoring is exact.
    """

    def __init__(
        self,
        detector: Detector,
        redact_type: str = "placeholder",
        *,
        avoid: str = "",
        rng: random.Random | None = None,
        exclude: Iterable[str] = (),
    ) -> None:
        self.detector = detector
        self.synthetic = redact_type == "synthetic"
        self._avoid = _Avoid(avoid)
        self.rng = rng or random.Random()
        self.counts: dict[str, int] = {}  # label (lower case) -> findings
        self.replacements: dict[str, str] = {}  # original -> replacement
        self.originals: dict[str, str] = {}  # replacement -> original
        self._numbers: dict[str, int] = {}
        self.exclude = set(exclude)  # values never masked (another masker's replacements)
        self.deadline: float | None = None

    @property
    def avoid(self) -> str:
        """Text a replacement must not appear in (the request's own)."""
        return self._avoid.text

    @avoid.setter
    def avoid(self, text: str) -> None:
        self._avoid = _Avoid(text)

    def fork(self) -> Masker:
        """A masker for the answer: its own counts, numbers after this one's, and this
        one's replacements left alone (they are restored, not masked)."""
        other = Masker(
            self.detector,
            "synthetic" if self.synthetic else "placeholder",
            avoid=self.avoid,
            rng=self.rng,
            exclude=self.originals,
        )
        other._numbers = dict(self._numbers)
        other.originals = dict.fromkeys(self.originals, "")  # taken: never reused
        return other

    # what was found
    def findings(self, text: str, concurrent: bool = False) -> list[Finding]:
        out = self.detector.find(text, self.deadline, concurrent)
        if self.exclude:
            out = [f for f in out if text[f.start : f.end] not in self.exclude]
        return out

    def mask(self, text: str, concurrent: bool = False) -> str:
        """`text` with every finding replaced."""
        return self.apply(text, self.findings(text, concurrent))

    def apply(self, text: str, findings: Sequence[Finding]) -> str:
        if not findings:
            return text
        parts: list[str] = []
        at = 0
        for f in findings:
            parts.append(text[at : f.start])
            parts.append(self.replacement(f.label, text[f.start : f.end]))
            at = f.end
        parts.append(text[at:])
        return "".join(parts)

    def replacement(self, label: str, value: str) -> str:
        key = label.lower()
        self.counts[key] = self.counts.get(key, 0) + 1
        found = self.replacements.get(value)
        if found is not None:
            return found
        candidate = None
        for _ in range(64):
            fake = self._synthetic(label, value) if self.synthetic else self._placeholder(label)
            if fake != value and fake not in self.originals and fake not in self._avoid:
                candidate = fake
                break
        while candidate is None:  # no fake value of this shape is free: a placeholder is
            fake = self._placeholder(label)
            if fake not in self.originals and fake not in self._avoid:
                candidate = fake
        self.replacements[value] = candidate
        self.originals[candidate] = value
        return candidate

    def _placeholder(self, label: str) -> str:
        n = self._numbers.get(label, 0) + 1
        self._numbers[label] = n
        return f"<{label}_{n}>"

    # fake values
    def _synthetic(self, label: str, value: str) -> str | None:
        rng = self.rng
        if label == "EMAIL":
            tld = rng.choice(("com", "org", "net"))
            return f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}{rng.randint(10, 99)}@example.{tld}"
        if label == "IP":
            if ":" in value:
                groups = ":".join(f"{rng.randint(1, 0xFFFF):x}" for _ in range(6))
                return f"2001:db8:{groups}"
            net = rng.choice(("192.0.2", "198.51.100", "203.0.113"))
            return f"{net}.{rng.randint(1, 254)}"
        if label == "CREDITCARD":
            digits = _digits(value)
            fake = digits[0] + "".join(rng.choice(string.digits) for _ in digits[1:-1])
            return _reshape(value, fake + _luhn_digit(fake))
        if label == "IBAN":
            compact = value.replace(" ", "")
            bban = _scramble(compact[4:], rng)
            check = 98 - _iban_number(compact[:2] + "00" + bban) % 97
            return _reshape(value, f"{compact[:2]}{check:02d}{bban}")
        if label == "SSN":
            sep = value[3]
            area = rng.randint(100, 665)
            return f"{area:03d}{sep}{rng.randint(1, 99):02d}{sep}{rng.randint(1, 9999):04d}"
        if label == "PHONE":
            keep = 0
            if value.startswith("+"):
                cut = [i for i, c in enumerate(value) if c in " .-("]
                keep = cut[0] if cut else 3
            return value[:keep] + _scramble(value[keep:], rng)
        if label == "PRIVATE_KEY":
            head = value[: value.index("-----", 5) + 5]
            sep = "\n" if "\n" in value else " "
            body = "".join(rng.choice(_B64) for _ in range(64))
            return f"{head}{sep}{body}{sep}{value[value.rindex('-----END') :]}"
        if label == "JWT":
            return ".".join(
                p[:3] + _scramble(p[3:], rng) if p.startswith("eyJ") else _scramble(p, rng)
                for p in value.split(".")
            )
        prefix = _KEY_PREFIX.match(value)
        keep = prefix.end() if prefix and label in _PREFIXED else 0
        return value[:keep] + _scramble(value[keep:], rng)


class _Avoid:
    """`s in text` for many `s` on a long text: a word index answers most of them."""

    __slots__ = ("text", "_words")

    def __init__(self, text: str) -> None:
        self.text = text
        self._words: set[str] | None = None

    def __contains__(self, s: str) -> bool:
        if len(self.text) <= 4096:
            return s in self.text
        if self._words is None:
            self._words = set(_WORDS.findall(self.text))
        if any(w not in self._words for w in _WORDS.findall(s)):
            return False  # a word of it is nowhere in the text
        return s in self.text


_WORDS = regex.compile(r"[\p{L}\p{N}]+")
_B64 = string.ascii_letters + string.digits + "+/"
_PREFIXED = frozenset(
    {
        "OPENAI_KEY",
        "ANTHROPIC_KEY",
        "AWS_ACCESS_KEY",
        "GITHUB_TOKEN",
        "GOOGLE_API_KEY",
        "SLACK_TOKEN",
        "STRIPE_KEY",
    }
)
_KEY_PREFIX = regex.compile(
    r"sk-ant-(?:[a-z]+\d*-)?|sk-(?:proj-|svcacct-|admin-)?|AKIA|ASIA|gh[pousr]_|github_pat_|"
    r"AIza|xox[abposr]-|[srp]k_(?:live|test)_"
)


def _scramble(value: str, rng: random.Random) -> str:
    """Random letters and digits in place of each letter and digit (case kept)."""
    out = []
    for c in value:
        if "0" <= c <= "9":
            out.append(rng.choice(string.digits))
        elif "a" <= c <= "z":
            out.append(rng.choice(string.ascii_lowercase))
        elif "A" <= c <= "Z":
            out.append(rng.choice(string.ascii_uppercase))
        else:
            out.append(c)
    return "".join(out)


def _reshape(template: str, chars: str) -> str:
    """`chars` laid out like `template` (its spaces and dashes kept)."""
    it = iter(chars)
    return "".join(c if c in " -" else next(it) for c in template)


# ---------------------------------------------------------------------- recovery


class Recovery:
    """Puts the originals back in place of the replacements a Masker made.

    Placeholders (`<EMAIL_1>`) are delimited; fake values are only replaced as whole
    words (`192.0.2.5` is not the start of `192.0.2.55`), so in a stream a fake value at
    the very end of a piece waits for the next character."""

    def __init__(self, originals: dict[str, str]) -> None:
        self.originals = dict(originals)
        keys = sorted(self.originals, key=len, reverse=True)
        self.bounded = any(not (k.startswith("<") and k.endswith(">")) for k in keys)
        self._pattern = None
        if keys:
            alternation = "|".join(map(regex.escape, keys))
            if self.bounded:
                alternation = rf"(?<![\w@.+-])(?:{alternation})(?![\w@+-]|[.-]\w)"
            self._pattern = regex.compile(alternation)
        self._by_first: dict[str, list[str]] = {}
        for k in keys:
            self._by_first.setdefault(k[0], []).append(k)
        self._longest = len(keys[0]) if keys else 0

    def __bool__(self) -> bool:
        return self._pattern is not None

    def recover(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self.originals[m.group()], text)

    def split(self, text: str) -> tuple[str, str]:
        """(`text` restored up to what may be the start of a replacement, that end)."""
        if self._pattern is None:
            return text, ""
        parts: list[str] = []
        at = 0
        for m in self._pattern.finditer(text):
            if self.bounded and m.end() >= len(text) - 1:
                break  # what follows decides whether it is a whole word
            parts.append(text[at : m.start()])
            parts.append(self.originals[m.group()])
            at = m.end()
        hold = self._partial(text, at)
        parts.append(text[at : len(text) - hold])
        return "".join(parts), text[len(text) - hold :]

    def _partial(self, text: str, since: int) -> int:
        """Length of the longest end of `text` (after `since`) that begins a key (or,
        for fake values, is one, maybe with one character after it)."""
        extra = 2 if self.bounded else 0
        start = max(since, len(text) - self._longest - extra + 1)
        for i in range(start, len(text)):
            keys = self._by_first.get(text[i])
            if keys:
                tail = text[i:]
                for k in keys:
                    if len(k) > len(tail):
                        if k.startswith(tail):
                            return len(text) - i
                    elif self.bounded and len(tail) - len(k) <= 1 and tail.startswith(k):
                        return len(text) - i
        return 0


class TextStream:
    """One text that arrives in pieces (a streamed answer's content): `feed` each
    piece, send what it returns, then send `flush()` at the end.

    With a `masker` (the answer is sanitized too) text is held to the end of its line
    (or of a long run of text), so an item is never cut in two before it is found; with
    a `recovery` the end of a piece that may begin a replacement is held until the next
    piece shows whether it does.
    """

    __slots__ = ("masker", "recovery", "line_limit", "_raw", "_masked")

    def __init__(
        self, masker: Masker | None, recovery: Recovery | None, line_limit: int = 1024
    ) -> None:
        self.masker = masker
        self.recovery = recovery if recovery else None
        self.line_limit = line_limit
        self._raw = ""  # not masked yet
        self._masked = ""  # masked, may begin a replacement

    @property
    def holding(self) -> bool:
        return bool(self._raw or self._masked)

    def feed(self, piece: str) -> str:
        text = piece
        if self.masker is not None:
            self._raw += piece
            text, self._raw = _mask_ready(self.masker, self._raw, self.line_limit)
        if self.recovery is not None:
            text, self._masked = self.recovery.split(self._masked + text)
        return text

    def flush(self) -> str:
        text, self._raw = self._raw, ""
        if self.masker is not None and text:
            text = self.masker.mask(text)
        text, self._masked = self._masked + text, ""
        return self.recovery.recover(text) if self.recovery is not None else text


_PEM_BEGIN = "-----BEGIN"
_PEM_END = regex.compile(r"-----END [A-Z0-9 ]*-----")
_PEM_LIMIT = 20_000


def _mask_ready(masker: Masker, raw: str, line_limit: int) -> tuple[str, str]:
    """(the masked part of `raw` that no later text can change, the rest)."""
    cut = raw.rfind("\n") + 1
    if len(raw) - cut > line_limit:  # a long line: keep its last part only
        cut = max(cut, len(raw) - line_limit // 4)
        space = max(raw.rfind(" ", 0, cut), raw.rfind("\t", 0, cut))
        if space > 0:
            cut = space + 1
    begin = raw.rfind(_PEM_BEGIN, 0, cut)
    if begin >= 0 and not _PEM_END.search(raw, begin) and len(raw) - begin < _PEM_LIMIT:
        cut = begin  # a private key being written: hold it whole
    if cut <= 0:
        return "", raw
    findings = masker.findings(raw)
    for f in reversed(findings):
        if f.start < cut < f.end:
            cut = f.start
    done = [f for f in findings if f.end <= cut]
    return masker.apply(raw[:cut], done), raw[cut:]


# ----------------------------------------------------------------- JSON documents

#: keys whose string values are text a model reads or writes (streamed answers)
TEXT_KEYS = frozenset(
    {
        "content",
        "text",
        "arguments",
        "partial_json",
        "refusal",
        "reasoning_content",
        "reasoning",
        "thinking",
        "delta",
        "response",
        "generated_text",
        "output_text",
    }
)


@dataclass(slots=True)
class StringRef:
    """A string inside a JSON document, where it is and how to replace it."""

    path: tuple[Any, ...]
    container: Any
    key: Any
    text: str = field(default="")

    def set(self, value: str) -> None:
        self.container[self.key] = value


def iter_strings(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[StringRef]:
    """Every string in a JSON document. A path steps into an object by key; an object
    that has an integer `index` (OpenAI's choices and tool calls, Anthropic's content
    blocks) adds it, so the same text of one stream keeps the same path in every event."""
    if isinstance(doc, dict):
        index = doc.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            path = (*path, ("#", index))
        for k, v in doc.items():
            if isinstance(v, str):
                yield StringRef((*path, k), doc, k, v)
            elif isinstance(v, (dict, list)):
                yield from iter_strings(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            if isinstance(v, str):
                yield StringRef((*path, i), doc, i, v)
            elif isinstance(v, (dict, list)):
                yield from iter_strings(v, (*path, i))
