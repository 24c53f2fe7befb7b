"""PII corpus: planted personal data of many kinds never survives scrubbing in any free-text field, while
ordinary product text (sizes, models, prices, years, ratios) comes through unchanged."""

from __future__ import annotations

import pandas as pd
import pytest

from common.data.anonymize import AnonymizationConfig, anonymize_marketplace
from common.data.pii import scrub_pii
from common.data.schema import Marketplace
from common.data.synthetic import generate_marketplace

# (placeholder, planted PII): the whole planted span must become exactly that one placeholder.
CORPUS: list[tuple[str, str]] = [
    ("[EMAIL]", "jane.doe+shop@mail.example.co.uk"),
    ("[EMAIL]", "BOB_99@Example.COM"),
    ("[EMAIL]", "max.mustermann@web.de"),
    ("[EMAIL]", "li-wei@company.com.cn"),
    ("[EMAIL]", "info@bäckerei-müller.de"),
    ("[URL]", "https://blog.example.net/me?x=1"),
    ("[URL]", "http://192.168.0.1/admin"),
    ("[URL]", "www.shop-reviews.org/p/2"),
    ("[URL]", "ftp://files.example.org/pub"),
    ("[URL]", "myshop.com"),
    ("[URL]", "example.de/x"),
    ("[URL]", "amazon.de"),
    ("[URL]", "shop.co.uk"),
    ("[URL]", "boutique.fr/panier"),
    ("[URL]", "my-store.shop"),
    ("[URL]", "portfolio.dev/about"),
    ("[URL]", "seller.in/store/42"),
    ("[URL]", "tienda.com.mx"),
    ("[URL]", "EXAMPLE.NL"),
    ("[IP]", "192.168.1.10"),
    ("[IP]", "10.0.0.254:8080"),
    ("[IP]", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
    ("[IP]", "2001:db8::8a2e:370:7334"),
    ("[IP]", "fe80::1ff:fe23:4567:890a"),
    ("[IP]", "::1"),
    ("[MAC]", "00:1A:2B:3C:4D:5E"),
    ("[MAC]", "a4-5e-60-c2-11-9f"),
    ("[PHONE]", "+1 (555) 013-2234"),
    ("[PHONE]", "555.013.0042"),
    ("[PHONE]", "555-013-2234"),
    ("[PHONE]", "(555) 013-2234"),
    ("[PHONE]", "5550132234"),
    ("[PHONE]", "15550132234"),
    ("[PHONE]", "+44 20 7946 0958"),
    ("[PHONE]", "+4915123456789"),
    ("[PHONE]", "+33 1 23 45 67 89"),
    ("[PHONE]", "01 23 45 67 89"),
    ("[PHONE]", "020 7946 0958"),
    ("[PHONE]", "0151 23456789"),
    ("[PHONE]", "1-800-555-0199"),
    ("[PHONE]", "+91 98765 43210"),
    ("[PHONE]", "555-0123"),
    ("[PHONE]", "+61.2.9876.5432"),
    ("[IBAN]", "DE89 3704 0044 0532 0130 00"),
    ("[IBAN]", "GB29NWBK60161331926819"),
    ("[IBAN]", "FR14 2004 1010 0505 0001 3M02 606"),
    ("[IBAN]", "NL91ABNA0417164300"),
    ("[CARD]", "4111 1111 1111 1111"),
    ("[CARD]", "4111-1111-1111-1111"),
    ("[CARD]", "5500000000000004"),
    ("[CARD]", "3782 822463 10005"),
    ("[NUMBER]", "112-3456789-1234567"),
    ("[SSN]", "123-45-6789"),
    ("[SSN]", "219 09 9999"),
    ("[DATE]", "1985-04-12"),
    ("[DATE]", "12/04/1985"),
    ("[DATE]", "04/12/85"),
    ("[DATE]", "12.04.1985"),
    ("[DATE]", "April 12, 1985"),
    ("[DATE]", "12th April 1985"),
    ("[DATE]", "3 Sept 1990"),
    ("[ADDRESS]", "1600 Pennsylvania Avenue NW"),
    ("[ADDRESS]", "42 Elm St."),
    ("[ADDRESS]", "221B Baker Street"),
    ("[ADDRESS]", "77 Martin Luther King Blvd, Apt 4B"),
    ("[ADDRESS]", "Hauptstraße 5"),
    ("[ADDRESS]", "Bahnhofstr. 12a"),
    ("[ADDRESS]", "P.O. Box 1234"),
    ("[POSTCODE]", "CA 90210"),
    ("[POSTCODE]", "IL 62704-1234"),
    ("[POSTCODE]", "K1A 0B1"),
    ("[POSTCODE]", "SW1A 1AA"),
    ("[HANDLE]", "@shopper_12"),
    ("[HANDLE]", "@jane.doe"),
]
TEMPLATES = ("please contact {} about it", "{}", "Great kettle! Details: {} - thanks")
ORDINARY = [
    "USB-C 3.1 cable 2m",
    "size 10.5",
    "model X200",
    "only $19.99, was $24.99",
    "bought in 2024, still works in March 2025",
    "Bought 2 pans for 35 dollars in 2024, size 12-14, 5 stars",
    "4K 60Hz HDMI 2.1, 1080p fallback",
    "firmware v2.0.1",
    "pack of 12, sizes 10 12 14 16 18",
    "1/2 inch, open 24/7, 50/50 blend",
    "ships in 3-5 business days",
    "M.2 NVMe 1TB, PS5 1TB upgrade",
    "iPhone 15 Pro and Galaxy S23",
    "5000mAh, 12V 2A, 100% cotton",
    "screen 16:9, ratio 4:3, ready by 9:30 am",
    "1.5 kg, 0.5 mm, 3.5mm jack",
    "price €24,99 or £1,299.99",
    "No. 5 perfume, ISO 9001, IP68, Wi-Fi 6, Bluetooth 5.3",
    "Model: AB-1234, SKU 12345, part 8765-432",
    "great product.It works and the lid fits. 10/10",
    "love it, done.so happy",
    "1 000 000 units sold, rated 4.5 by 1,234 buyers",
    "std::vector in the manual, e.g. the U.S. version",
    "Samsung 990 Pro, RTX 4090, Ryzen 7 7800X3D",
    "2 x 500GB SSD, 8GB RAM, 256 GB",
]
KINDS = {placeholder for placeholder, _ in CORPUS}


def test_corpus_is_large_and_varied() -> None:
    """The corpus itself: at least 50 planted strings of at least 10 kinds."""
    assert len(CORPUS) >= 50 and len(KINDS) >= 10


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize(("placeholder", "pii"), CORPUS)
def test_planted_pii_becomes_exactly_its_placeholder(template: str, placeholder: str, pii: str) -> None:
    """The whole planted span, not a part of it, is replaced, and the sentence around it is left alone."""
    assert scrub_pii(template.format(pii)) == template.format(placeholder)


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_product_text_survives(text: str) -> None:
    """Sizes, models, prices, years, versions, ratios and times are not mistaken for PII."""
    assert scrub_pii(text) == text


def test_many_kinds_in_one_review() -> None:
    """Several kinds in one text each get their own placeholder."""
    text = "Mail jane@shop.io or call 5550132234; IBAN DE89370400440532013000, born 1985-04-12, @jd"
    assert scrub_pii(text) == "Mail [EMAIL] or call [PHONE]; IBAN [IBAN], born [DATE], [HANDLE]"


def _planted_marketplace() -> tuple[Marketplace, list[str]]:
    """A marketplace whose every free-text field (review text, an extra review title, an extra search query
    column on the clicks) carries the corpus, one planted string per row."""
    m = generate_marketplace(200, 300, seed=5)
    texts = [f"see {pii} now" for _, pii in CORPUS]
    reviews, clicks = m.reviews.copy(), m.clicks.copy()
    assert len(reviews) >= len(texts) and len(clicks) >= len(texts)
    reviews["review_text"] = [texts[i % len(texts)] for i in range(len(reviews))]
    reviews["review_title"] = [texts[(i + 7) % len(texts)] for i in range(len(reviews))]
    clicks["search_query"] = [texts[(i + 13) % len(texts)] for i in range(len(clicks))]
    return Marketplace(reviews=reviews, products=m.products, clicks=clicks, users=m.users), texts


def test_no_planted_pii_survives_in_any_free_text_field() -> None:
    """After anonymization, no planted string appears in review text, titles or queries: each row reads
    "see <placeholder> now"."""
    market, _ = _planted_marketplace()
    anon = anonymize_marketplace(market, AnonymizationConfig(key=b"k" * 32, k=1))
    allowed = {f"see {placeholder} now" for placeholder in KINDS}
    for table, column in (("reviews", "review_text"), ("reviews", "review_title"), ("clicks", "search_query")):
        values = set(getattr(anon, table)[column])
        assert values <= allowed, (table, column, sorted(values - allowed)[:3])
    blob = pd.concat([anon.reviews.astype(str), anon.clicks.astype(str)], axis=1).to_csv()
    assert not any(pii in blob for _, pii in CORPUS if len(pii) > 4)
