"""PII scrubbing for free text: each span that looks like personal data becomes a placeholder such as [EMAIL].

Applied on the client to every free-text field before examples are built (common/data/anonymize.py), so no
model ever trains on, or memorises, a customer's contact or payment details. The scrubber is a list of regular
expressions, each with an optional validator, tried in a fixed order (a later pattern never sees what an earlier
one replaced). It catches:
- emails; URLs with a scheme or `www.`; bare domains with a generic TLD (com, net, shop, ...) or any two-letter
  country TLD (`example.de/x`, `shop.co.uk`); IPv4 (with port), IPv6 (full and `::`-compressed) and MAC addresses;
- IBANs (mod-97 checked, spaced or not); card-shaped numbers of 13-19 digits (not Luhn-checked: any such
  number goes); US social security numbers (ddd-dd-dddd);
- phone numbers: `+CC ...`, `(area) ...`, separated by spaces, dots or dashes, unseparated runs of 10-15
  digits, and US local ddd-dddd. Hence any number of 10+ digits goes, whatever it is (order and tracking
  numbers, ISBNs, barcodes; [NUMBER] past 15 digits): product text rarely needs them and they often point to
  a person;
- full dates (day, month and year: 1985-04-12, 12/04/1985, 12.04.1985, April 12, 1985, 12th April 1985), since
  a full date in a review is as likely a birth date as anything; a year or a month and year stays;
- street addresses (number + capitalised name + Street/St/Ave/Road/..., German ...straße/weg 12, P.O. Box),
  US ZIP codes after a state code (CA 90210), Canadian postal codes, UK postcodes with a two-letter area;
- @handles.
It does NOT catch: personal names ("John Smith") and any other PII without a fixed shape; obfuscated forms
("jane at example dot com", digits spelled out); numbers of 7-9 digits without a separator; phone numbers
written as 2-digit groups without a leading 0 or +; bare domains whose TLD is an English word (it, is, in, me,
my, no, so, to, ...) unless they have a path or a subdomain; addresses without a street suffix; one-letter-area
UK postcodes (M1 1AE) and continental postal codes (10115 Berlin). It over-scrubs a little: any full date,
long digit runs, four-part version numbers (1.2.3.4 reads as an IPv4 address), and `word.xx` when a space after
a full stop is missing (readme.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable

Validator = Callable[[re.Match[str]], str | None]  # the placeholder, or None to keep the text

# Two-letter TLDs that are also common English words: a bare `done.it` is usually a missing space, not a domain.
WORD_TLDS = frozenset("am an as at be by do go he id if in is it me my no of on or so to up us we".split())
GENERIC_TLDS = frozenset("""com net org info biz edu gov mil int io co ai app dev shop store online site xyz tech
    blog page cloud top club live news pro mobi name eu asia travel email link website space fun art design digital
    agency media social market world today life one page global help""".split())
US_STATES = ("AL AK AZ AR CA CO CT DC DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC "
             "ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY").split()
_HEX = r"[0-9A-Fa-f]{1,4}"
_LABEL = r"[^\W_](?:[\w-]{0,61}[^\W_])?"
_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_MON = r"(?:0?[1-9]|1[0-2])"
_YEAR = r"(?:19|20)\d{2}"
_ORD = r"(?:st|nd|rd|th)?"
_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?"
          r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?")
_STREET = (r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Terrace|Way"
           r"|Highway|Hwy|Parkway|Pkwy|Square|Sq)")


def _always(placeholder: str) -> Validator:
    return lambda _m: placeholder


def _domain(m: re.Match[str]) -> str | None:
    """A bare domain only when its TLD is written in one case and is a known or non-word country TLD."""
    labels, tld, path = m.group("labels"), m.group("tld"), m.group("path")
    if not (tld.islower() or tld.isupper()):
        return None  # "broke.My son": a missing space, not a domain
    tld = tld.lower()
    country = len(tld) == 2
    if tld in GENERIC_TLDS or (country and (tld not in WORD_TLDS or path or labels.count(".") >= 2)):
        return "[URL]"
    return None


def _ipv6(m: re.Match[str]) -> str | None:
    text = m.group(0)
    groups = [g for g in text.split(":") if g]
    return "[IP]" if text.count(":") == 7 or text.startswith("::") or any(len(g) >= 3 for g in groups) else None


def _iban(m: re.Match[str]) -> str | None:
    compact = m.group(0).replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return None
    digits = "".join(str(int(ch, 36)) for ch in compact[4:] + compact[:4])
    return "[IBAN]" if int(digits) % 97 == 1 else None


def _phone(m: re.Match[str]) -> str | None:
    """Digit count and shape decide: a lone year, size range or price never has 10+ digits."""
    text = m.group(0)
    digits = sum(ch.isdigit() for ch in text)
    if text.startswith("+") or "(" in text:
        return "[PHONE]" if 7 <= digits <= 15 else None
    if re.fullmatch(r"\d{3}[-.]\d{4}", text):
        return "[PHONE]"
    groups = re.split(r"[ .\-]", text)
    if len(groups) > 2 and all(len(g) <= 2 for g in groups) and not text.startswith("0"):
        return None  # "sizes 10 12 14 16 18": a list, unlike "01 23 45 67 89"
    if len(groups) > 2 and len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:]):
        return None  # thousands separators: 1 000 000 000
    if digits > 15:
        return "[NUMBER]"  # an order or account number: longer than any phone number, as identifying
    return "[PHONE]" if digits >= 10 else None


def _rule(pattern: str, validator: Validator | str, flags: int = 0) -> tuple[re.Pattern[str], Validator]:
    return re.compile(pattern, flags), _always(validator) if isinstance(validator, str) else validator


# Order matters: emails before domains and handles; URLs and IPs before dates and numbers; IBANs, dates and SSNs
# before cards, and cards before phones (each would match a part of the one before).
PII_RULES: tuple[tuple[re.Pattern[str], Validator], ...] = (
    _rule(r"[\w.+-]+@(?:[^\W_][\w-]*\.)+[^\W\d_]{2,}", "[EMAIL]"),
    _rule(r"\b(?:(?:https?|ftps?)://|www\.)[^\s<>\"]+", "[URL]", re.IGNORECASE),
    _rule(rf"(?<![\w:])(?:{_HEX}(?::{_HEX}){{7}}|(?:{_HEX}(?::{_HEX}){{0,6}})?::(?:{_HEX}(?::{_HEX}){{0,6}})?)"
          r"(?![\w:])", _ipv6),
    _rule(r"(?<![\w:-])[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}(?![\w:-])", "[MAC]"),
    _rule(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
          r"(?::\d{1,5})?(?![\w]|\.\d)", "[IP]"),
    _rule(rf"(?<![\w.@-])(?P<labels>(?:{_LABEL}\.)+)(?P<tld>[^\W\d_]{{2,24}})(?![\w-])(?P<path>[/?#]\S*)?",
          _domain),
    _rule(r"(?<!\w)[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?!\w)", _iban, re.IGNORECASE),
    _rule(rf"(?<![\w./-])(?:{_YEAR}([-/.]){_MON}\1{_DAY}|{_DAY}([/.]){_DAY}\2(?:{_YEAR}|\d{{2}})|{_DAY}-{_DAY}-{_YEAR}"
          rf"|{_DAY}{_ORD}\s+(?:of\s+)?{_MONTH},?\s+{_YEAR}|{_MONTH}\s+{_DAY}{_ORD},?\s+{_YEAR})(?![\w/]|[.-]\d)",
          "[DATE]", re.IGNORECASE),
    _rule(r"(?<![\w+-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\w-])", "[SSN]"),
    _rule(r"(?<![\w+-])(?:\d{4}([ -]?)\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -]?)\d{6}\2\d{4,5})(?![\w-]|\.\d)", "[CARD]"),
    _rule(rf"(?<![\w-])\d{{1,5}}[A-Za-z]?(?:\s+[A-Z][\w'-]*){{1,3}}\s+{_STREET}\b\.?(?:\s+(?:NW|NE|SW|SE)\b)?"
          r"(?:,?\s*(?:Apt|Apartment|Suite|Ste|Unit)\.?\s*#?\w+)?", "[ADDRESS]"),
    _rule(r"\b[A-ZÄÖÜ][a-zäöüß]+(?:straße|strasse|str\.|weg|gasse|platz|allee)\s*\d{1,4}[a-z]?\b", "[ADDRESS]"),
    _rule(r"\bP\.?\s?O\.?\s+Box\s+\d{1,6}\b", "[ADDRESS]", re.IGNORECASE),
    _rule(rf"\b(?:{'|'.join(US_STATES)})\s+\d{{5}}(?:-\d{{4}})?(?![\w-])", "[POSTCODE]"),
    _rule(r"\b[ABCEGHJ-NPRSTVXY]\d[ABCEGHJ-NPRSTV-Z][ -]?\d[ABCEGHJ-NPRSTV-Z]\d\b", "[POSTCODE]"),
    _rule(r"\b[A-Z]{2}\d[A-Z\d]?\s?(?!\d[KMGT]B\b)\d[ABD-HJLNP-UW-Z]{2}\b", "[POSTCODE]"),
    _rule(r"(?<![\w+.\-/])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{1,5}\)[ .\-]?)?\d{1,12}(?:[ .\-]\d{1,12}){0,5}"
          r"(?!\w|[.\-]\d)", _phone),
    _rule(r"(?<![\w@.])@\w(?:[\w.]*\w)?", "[HANDLE]"),
)


def scrub_pii(text: str) -> str:
    """`text` with every span a rule recognises replaced by its placeholder ([EMAIL], [PHONE], ...)."""
    for pattern, validator in PII_RULES:
        text = _substitute(pattern, validator, text)
    return text


def _substitute(pattern: re.Pattern[str], validator: Validator, text: str) -> str:
    return pattern.sub(lambda m: validator(m) or m.group(0), text)
