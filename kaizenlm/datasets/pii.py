"""PII scrubbing with typed placeholders: what `kaizenlm.datasets.curation.scrub_pii` does.

Every text that leaves DuckDB for training passes through `scrub_pii`, which replaces

- e-mail addresses with ``<EMAIL>``;
- phone numbers with ``<PHONE>``: international (``+44 20 7946 0958``, ``0049 30 123456``),
  national with separators (``(415) 555-0134``, ``06 12 34 56 78``, ``030 901820``), and any
  digit run after a phone word ("tel", "Telefon", "téléphone", "móvil", "電話", ...);
- payment card numbers with ``<CARD>``: 13-19 digits from a card network's range, Luhn-checked;
- IBANs with ``<IBAN>`` (ISO 13616 mod-97 checked);
- IPv4 and IPv6 addresses with ``<IP>``;
- government-ID-like numbers with ``<ID>``: US SSN, UK NINO, Spanish DNI/NIE (check letter),
  Brazilian CPF (check digits), Italian codice fiscale, French NIR (key checked), and any
  number of 5+ digits after an ID word ("SSN", "passport", "Personalausweis", "DNI", ...);
- keys and tokens (``sk-...``, ``AKIA...``, ``ghp_...``, ``Bearer ...``, private keys) with
  ``<SECRET>``.

Ordinary numbers are left alone: dates and times, prices, versions, order numbers and counts.
Numbers are judged by shape, checksum and context, never by length alone: a bare 10-digit
order number stays, the same digits after "call me on" go. Detectors run in a fixed order
(the most specific first) and each sees the text the previous ones produced, so a card
number is never half-replaced as a phone. The labeled suite in tests/pii_cases.py measures
recall and false positives (docs/DATASETS.md has the figures).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------
# Checksums


def luhn_ok(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = ord(ch) - 48
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    """ISO 13616: 15-34 characters whose rearranged numeric form is 1 mod 97."""
    compact = re.sub(r"[\s\-]", "", text).upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


# Card networks' leading digits: Visa 4, Mastercard 51-55 and 2221-2720, Amex 34/37, Diners
# 30/36/38/39, JCB 35, Discover/UnionPay/Maestro 6x and 50/56-59. Order numbers starting
# with 0, 1, 7, 8 or 9 are never cards.
_CARD_PREFIX = re.compile(r"4|5[0-9]|6|3[0456789]|2(?:2[2-9]|[3-6]\d|7[01]|720)")


def card_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIX.match(digits)) and luhn_ok(digits)


_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def dni_ok(text: str) -> bool:
    """Spanish DNI (8 digits + letter) or NIE (X/Y/Z + 7 digits + letter): the letter is a checksum."""
    compact = re.sub(r"[\s\-]", "", text).upper()
    number = compact[:-1]
    if number[0] in "XYZ":
        number = str("XYZ".index(number[0])) + number[1:]
    return number.isdigit() and _DNI_LETTERS[int(number) % 23] == compact[-1]


def cpf_ok(text: str) -> bool:
    """Brazilian CPF: two check digits, and not all digits equal."""
    d = [int(c) for c in re.sub(r"\D", "", text)]
    if len(d) != 11 or len(set(d)) == 1:
        return False
    for n in (9, 10):
        check = sum(d[i] * (n + 1 - i) for i in range(n)) * 10 % 11 % 10
        if check != d[n]:
            return False
    return True


def nir_ok(text: str) -> bool:
    """French NIR (social security number): 13 characters and a 2-digit key = 97 - n mod 97."""
    compact = re.sub(r"\s", "", text).upper()
    body, key = compact[:13], compact[13:]
    body = body.replace("2A", "19").replace("2B", "18")
    return body.isdigit() and key.isdigit() and 97 - int(body) % 97 == int(key)


def ssn_ok(text: str) -> bool:
    """US SSN: area not 000, 666 or 9xx; group not 00; serial not 0000."""
    d = re.sub(r"\D", "", text)
    return len(d) == 9 and d[:3] not in ("000", "666") and d[0] != "9" and d[3:5] != "00" and d[5:] != "0000"


# ---------------------------------------------------------------------------------------------
# Context words (scoped (?i:...) so acronyms stay case-sensitive where the word is common)

_PHONE_WORDS = (
    r"(?:(?i:phone|telephone|tel|t[ée]l[ée]phone|telefon|telefono|tel[ée]fono|telefone|m[óo]vil|mobile|mobil|cell"
    r"|cellphone|handy|portable|whatsapp|fax|call me(?: back)?(?: at| on)?|ring me(?: on| at)?"
    r"|reach me(?: at| on)?|text me(?: at| on)?|rufen sie mich unter|ruf mich unter|appelez-moi au"
    r"|ll[áa]mame al|chiamami al|ligue para)|電話|携帯|电话|手机|телефон)"
)
_ID_WORDS = (
    r"(?:(?i:ssn|social security(?: number| no\.?)?|sozialversicherungsnummer|passport(?: number| no\.?)?|passeport"
    r"|pasaporte|reisepass(?:nummer)?|passaporto|national id|id number|id card|identity card|personalausweis"
    r"(?:nummer)?|ausweisnummer|carte d'identit[ée]|num[ée]ro de s[ée]curit[ée] sociale|s[ée]curit[ée] sociale"
    r"|codice fiscale|driver'?s licen[cs]e|driving licen[cs]e|f[üu]hrerschein(?:nummer)?|tax id|steuer-?id"
    r"|steueridentifikationsnummer|national insurance(?: number)?|burgerservicenummer|aadhaar|c[ée]dula)"
    r"|SSN|DNI|NIE|NIF|CPF|BSN|NINO|SIN|TIN|PAN|マイナンバー|身份证)"
)
# Between a context word and the number: punctuation and filler words ("number", "is", "no.").
_FILLER = r"(?:[\s:#=().\-]|(?i:number|numéro|número|nummer|numero|no\.|nr\.?|n°|nº|is|es|est|ist|è|my|mein|mon|mi)\b)*"

# ---------------------------------------------------------------------------------------------
# Detectors


@dataclass(frozen=True)
class Detector:
    kind: str
    pattern: re.Pattern
    check: Callable[[re.Match], bool] | None = None
    # Cheap gates on the whole text, so most detectors never run on most texts: the least
    # number of ASCII digits a match needs, and a pattern the text must contain.
    min_digits: int = 0
    needs: re.Pattern | None = None
    group: str | None = None  # replace only this named group (keeps the context word)


def _n_digits(text: str) -> int:
    raw = text.encode()  # bytes.translate is the fastest count in CPython: a few microseconds per answer
    return len(raw) - len(raw.translate(None, b"0123456789"))


_VERSION_BEFORE = re.compile(r"\b(?i:version|ver\.?|build|release|firmware|chrome|firefox|python)\s*$")


def _ipv4_ok(m: re.Match) -> bool:
    # "version 1.0.0.1" is a version, not an address
    return not _VERSION_BEFORE.search(m.string[max(0, m.start() - 12):m.start()])


def _ipv6_ok(m: re.Match) -> bool:
    text = m.group()
    return text.count(":") >= 2 and _n_digits(text) > 0 and ("::" in text or text.count(":") == 7 or "." in text)


_DATE_LEAD = re.compile(r"\d{4}[.\-]\d{1,2}[.\-]\d{1,2}|\d{1,2}[.\-]\d{1,2}[.\-]\d{4}")


def _national_phone_ok(m: re.Match) -> bool:
    text = m.group()
    if not 9 <= _n_digits(text) <= 12 or _DATE_LEAD.match(text):
        return False
    groups = re.findall(r"\d+", text)
    # 1 234 567 890 / 100.000.000: thousands grouping, a number, not a phone
    return not (len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:]) and "(" not in text)


def _keyword_number_ok(lo: int, hi: int) -> Callable[[re.Match], bool]:
    return lambda m: lo <= _n_digits(m.group("value")) <= hi


_H = r"[0-9A-Fa-f]{1,4}"
_V4 = r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV6 = (
    rf"(?:(?:{_H}:){{7}}{_H}|(?:{_H}:){{1,7}}:|(?:{_H}:){{1,6}}:{_H}|(?:{_H}:){{1,5}}(?::{_H}){{1,2}}"
    rf"|(?:{_H}:){{1,4}}(?::{_H}){{1,3}}|(?:{_H}:){{1,3}}(?::{_H}){{1,4}}|(?:{_H}:){{1,2}}(?::{_H}){{1,5}}"
    rf"|{_H}:(?::{_H}){{1,6}}|:(?::{_H}){{1,7}}|::(?:ffff(?::0{{1,4}})?:)?{_V4}|(?:{_H}:){{1,4}}:{_V4})"
)

DETECTORS: list[Detector] = [
    Detector("SECRET", re.compile(
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"
        r"|\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{16,}"
        r"|\bAKIA[0-9A-Z]{16}\b"
        r"|\bgh[pousr]_[A-Za-z0-9]{30,}"
        r"|\bxox[abposr]-[A-Za-z0-9\-]{10,}"
        r"|\b[Bb]earer\s+[A-Za-z0-9\-._~+/]{20,}=*"),
        needs=re.compile(r"PRIVATE KEY|[spr]k-|AKIA|gh[pousr]_|xox|[Bb]earer")),
    Detector("EMAIL", re.compile(r"(?<![\w.%+\-])[\w.%+\-]+@[\w\-]+(?:\.[\w\-]+)*\.[^\W\d_]{2,}(?![\w\-])"),
             needs=re.compile("@")),
    Detector("IBAN", re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[ \-]?[A-Z0-9]{4}){2,7}(?:[ \-]?[A-Z0-9]{1,4})?"
                                r"(?![A-Za-z0-9])"),
             check=lambda m: iban_ok(m.group()), min_digits=6),
    Detector("CARD", re.compile(r"(?<![\w.,])\d(?:[ \-]?\d){12,18}(?!\w|[.,]\d)"),
             check=lambda m: card_ok(m.group()), min_digits=13),
    # Government IDs with a fixed shape (and a checksum where the format has one).
    Detector("ID", re.compile(r"(?<![\w\-])\d{3}([\- ])\d{2}\1\d{4}(?![\w\-])"),  # US SSN
             check=lambda m: ssn_ok(m.group()), min_digits=9),
    Detector("ID", re.compile(r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"),
             min_digits=6),  # UK National Insurance number
    Detector("ID", re.compile(r"\b(?:\d{8}|[XYZ]-?\d{7})-?[A-Z]\b"), check=lambda m: dni_ok(m.group()),
             min_digits=7),  # Spanish DNI / NIE
    Detector("ID", re.compile(r"(?<![\w.])\d{3}\.\d{3}\.\d{3}-\d{2}(?![\w-])"), check=lambda m: cpf_ok(m.group()),
             min_digits=11),  # Brazilian CPF
    Detector("ID", re.compile(r"\b[A-Z]{6}\d{2}[A-EHLMPR-T]\d{2}[A-Z]\d{3}[A-Z]\b"), min_digits=7),  # codice fiscale
    Detector("ID", re.compile(r"(?<![\w])[12] ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}(?![\w])"),
             check=lambda m: nir_ok(m.group()), min_digits=13),  # French NIR
    Detector("ID", re.compile(rf"{_ID_WORDS}{_FILLER}(?P<value>[A-Z0-9](?:[A-Z0-9]|[ \-./](?=[A-Z0-9])){{4,22}})"
                              r"(?![A-Za-z0-9])"),
             check=_keyword_number_ok(5, 20), min_digits=5, group="value"),
    Detector("IP", re.compile(rf"(?<![\w.:]){_IPV6}(?![\w:])"), check=_ipv6_ok, min_digits=1,
             needs=re.compile(r":[^\s]*:")),
    Detector("IP", re.compile(rf"(?<![\w.]){_V4}(?!\.?\w)"), check=_ipv4_ok, min_digits=4),
    Detector("PHONE", re.compile(rf"{_PHONE_WORDS}{_FILLER}(?P<value>\+?\(?\d(?:[\d()]|[ .\-/](?=[\d(])){{5,22}})(?!\w)"),
             check=_keyword_number_ok(6, 15), min_digits=6, group="value"),
    Detector("PHONE", re.compile(r"(?<![\w+])(?:\+[1-9]\d{0,2}|00[1-9]\d{0,2}(?=[ .\-]))"
                                 r"(?:[ .\-]?(?:\(\d{1,4}\)|\d{1,5})){1,7}(?!\w)"),
             check=lambda m: 8 <= _n_digits(m.group()) <= 15, min_digits=8),
    Detector("PHONE", re.compile(r"(?<![\w.+/:\-])(?:\(\d{1,5}\)|\d{1,5})(?:[ .\-]\(?\d{2,8}\)?){1,5}(?!\w|[.\-]\d)"),
             check=_national_phone_ok, min_digits=9),
]
PII_KINDS = ("EMAIL", "PHONE", "CARD", "IBAN", "IP", "ID", "SECRET")


def placeholder(kind: str) -> str:
    return f"<{kind}>"


def scrub_pii(text: str, counts: dict[str, int] | None = None, keep: Collection[str] = ()) -> str:
    """``text`` with every PII match replaced by its typed placeholder (``<EMAIL>``, ``<PHONE>``,
    ``<CARD>``, ``<IBAN>``, ``<IP>``, ``<ID>``, ``<SECRET>``).

    ``counts`` (kind -> replacements) is updated in place when given. Matches found in
    ``keep`` (exact strings: an organisation's own public contact address) stay.
    """
    if not text:
        return text
    n_digits = _n_digits(text)  # replacements only remove digits: the first count is an upper bound
    for det in DETECTORS:
        if n_digits < det.min_digits or (det.needs is not None and det.needs.search(text) is None):
            continue

        def repl(m: re.Match, det: Detector = det) -> str:
            if det.check is not None and not det.check(m):
                return m.group()
            if keep and m.group(det.group or 0) in keep:
                return m.group()
            if counts is not None:
                counts[det.kind] = counts.get(det.kind, 0) + 1
            if det.group is None:
                return placeholder(det.kind)
            start, end = m.span(det.group)
            whole = m.group()
            return whole[:start - m.start()] + placeholder(det.kind) + whole[end - m.start():]

        text = det.pattern.sub(repl, text)
    return text
