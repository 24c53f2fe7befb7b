"""The synthetic marketplace's world: regions, categories, styles, promotions, and the words that express them.

Kept apart from the sampler so the structure that carries the segment signal is readable in one place:
- every region favours some categories and styles (a mild prior: history stays the strongest user signal);
- every region has its own *expansion* habit: a user anchored in category `a` branches out into
  `REGION_EXPANSION[region][a]`, a different category in each region (so the same history implies a different
  next category per region);
- every special season favours promoted items (deals, gifts) and a few hot categories.
The mapping is drawn once from a fixed world seed so all generated data sets share the same world.
"""

from __future__ import annotations

import numpy as np

WORLD_SEED = 20261126

REGIONS: tuple[str, ...] = ("North America", "Europe", "Asia-Pacific", "Latin America", "Middle East & Africa")
REGION_WEIGHTS: tuple[float, ...] = (0.34, 0.29, 0.22, 0.12, 0.03)  # the last one is the sparse niche segment
AGE_BANDS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55+")  # a control segment with no effect

# category -> (nouns, feature phrases)
CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "electronics": (("wireless earbuds", "bluetooth speaker", "noise-cancelling headphones", "power bank",
                     "smartwatch", "e-reader"),
                    ("long battery life", "fast charging", "crisp sound", "touch controls")),
    "computers": (("laptop sleeve", "mechanical keyboard", "wireless mouse", "usb-c hub", "monitor stand",
                   "external ssd"), ("plug-and-play setup", "ergonomic layout", "fast data transfer", "backlit keys")),
    "gaming": (("gaming headset", "game controller", "gaming chair", "mouse pad", "console stand", "racing wheel"),
               ("low latency", "immersive audio", "programmable buttons", "rgb lighting")),
    "kitchen": (("chef knife", "non-stick pan", "espresso maker", "blender", "cast iron skillet", "stand mixer"),
                ("dishwasher safe", "even heating", "stainless steel", "easy cleanup")),
    "home decor": (("table lamp", "throw pillow", "wall art print", "scented candle", "area rug", "wall mirror"),
                   ("soft glow", "hand-finished details", "fade-resistant colors", "cozy texture")),
    "bedding": (("duvet cover", "memory foam pillow", "weighted blanket", "sheet set", "mattress topper",
                 "bed throw"), ("breathable cotton", "cooling fabric", "hypoallergenic fill", "deep pockets")),
    "outdoor": (("camping tent", "hiking backpack", "sleeping bag", "trekking poles", "camp stove", "headlamp"),
                ("waterproof shell", "lightweight frame", "weatherproof seams", "quick setup")),
    "cycling": (("bike helmet", "bike light set", "cycling jersey", "bike lock", "saddle bag", "floor pump"),
                ("aerodynamic fit", "high visibility", "quick-release mount", "puncture protection")),
    "fitness": (("yoga mat", "adjustable dumbbells", "resistance bands", "foam roller", "jump rope", "kettlebell"),
                ("non-slip grip", "sweat-resistant", "space-saving design", "gym-grade build")),
    "fashion": (("denim jacket", "leather belt", "wool scarf", "sneakers", "crossbody bag", "sunglasses"),
                ("tailored fit", "soft lining", "all-day comfort", "reinforced stitching")),
    "beauty": (("face serum", "hair dryer", "lipstick set", "night cream", "eau de parfum", "makeup brush set"),
               ("fragrance-free formula", "salon results", "long-lasting color", "dermatologist tested")),
    "toys": (("building blocks", "plush bear", "jigsaw puzzle", "remote control car", "board game", "dollhouse"),
             ("ages 6 and up", "educational play", "durable pieces", "hours of fun")),
    "books": (("mystery novel", "cookbook", "travel guide", "graphic novel", "biography", "science fiction novel"),
              ("page-turning story", "illustrated edition", "bestselling author", "hardcover binding")),
    "pet supplies": (("dog bed", "cat tree", "automatic pet feeder", "chew toy", "dog leash", "litter box"),
                     ("easy to clean", "chew-resistant", "vet recommended", "non-toxic materials")),
    "garden": (("garden hose", "pruning shears", "raised planter", "seed starter kit", "patio lights",
                "watering can"), ("rust-proof", "weather-ready", "easy assembly", "uv-stable plastic")),
    "baby": (("baby stroller", "baby monitor", "diaper bag", "high chair", "teething toy", "swaddle set"),
             ("safety certified", "one-hand fold", "gentle on skin", "easy to wipe")),
}
CATEGORY_NAMES: tuple[str, ...] = tuple(CATEGORIES)

# style -> (adjectives used in names, a phrase used in descriptions and reviews)
STYLES: dict[str, tuple[tuple[str, ...], str]] = {
    "rugged": (("rugged", "heavy-duty", "all-terrain"), "built to take a beating"),
    "minimalist": (("minimalist", "sleek", "understated"), "clean lines and nothing extra"),
    "vintage": (("vintage", "retro", "heritage"), "old-school charm"),
    "luxury": (("luxury", "premium", "deluxe"), "premium materials throughout"),
    "eco": (("eco-friendly", "sustainable", "recycled"), "made from responsibly sourced materials"),
    "compact": (("compact", "travel-size", "foldable"), "packs down small"),
    "vibrant": (("vibrant", "colorful", "bold"), "eye-catching colors"),
    "budget": (("budget", "value", "everyday"), "a great price for daily use"),
}
STYLE_NAMES: tuple[str, ...] = tuple(STYLES)

PROMOS: tuple[str, ...] = ("none", "deal", "gift")
PROMO_WEIGHTS: tuple[float, ...] = (0.72, 0.14, 0.14)
PROMO_PHRASES: dict[str, tuple[str, ...]] = {
    "none": ("",),
    "deal": ("Limited-time deal.", "Lightning deal: save 30% today.", "Doorbuster price while stocks last.",
             "Clearance offer, lowest price of the year."),
    "gift": ("Comes as a gift set.", "Gift-wrapped and ready to give.", "The perfect stocking stuffer.",
             "Packed in a gift-ready box with a card."),
}

REGION_FAVOURITES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "North America": (("outdoor", "gaming", "fitness", "pet supplies"), ("rugged", "luxury")),
    "Europe": (("cycling", "kitchen", "books", "home decor"), ("minimalist", "eco")),
    "Asia-Pacific": (("electronics", "computers", "beauty", "baby"), ("compact", "minimalist")),
    "Latin America": (("fashion", "toys", "garden", "fitness"), ("vibrant", "budget")),
    "Middle East & Africa": (("beauty", "fashion", "kitchen", "electronics"), ("luxury", "vintage")),
}
FAVOURITE_CATEGORY_BOOST = 1.5
FAVOURITE_STYLE_BOOST = 2.0

SEASON_EFFECTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "black_friday": ("deal", ("electronics", "gaming", "computers", "kitchen")),
    "prime_day": ("deal", ("electronics", "kitchen", "home decor", "computers")),
    "holiday": ("gift", ("toys", "beauty", "books", "fashion")),
}

BRAND_HEADS = ("Nor", "Alt", "Zen", "Kor", "Vel", "Lum", "Tor", "Sol", "Mar", "Bri", "Cas", "Dax", "Ever", "Fen")
BRAND_TAILS = ("vik", "ura", "ia", "ex", "on", "ara", "io", "ly", "mo", "tek", "wood", "line")
BRANDS_PER_CATEGORY = 6


def _draw_world() -> tuple[np.ndarray, list[list[str]]]:
    """Region expansion table (regions x categories -> category index) and brand names per category."""
    rng = np.random.default_rng(WORLD_SEED)
    n_cat = len(CATEGORY_NAMES)
    expansion = np.zeros((len(REGIONS), n_cat), dtype=np.int64)
    for a in range(n_cat):
        others = [c for c in range(n_cat) if c != a]
        expansion[:, a] = rng.choice(others, size=len(REGIONS), replace=False)  # distinct per region
    names = [h + t for h in BRAND_HEADS for t in BRAND_TAILS]
    picks = rng.choice(len(names), size=n_cat * BRANDS_PER_CATEGORY, replace=False)
    brands = [[names[i] for i in picks[c * BRANDS_PER_CATEGORY:(c + 1) * BRANDS_PER_CATEGORY]]
              for c in range(n_cat)]
    return expansion, brands


REGION_EXPANSION_INDEX, BRANDS = _draw_world()
REGION_EXPANSION: dict[str, dict[str, str]] = {
    region: {CATEGORY_NAMES[a]: CATEGORY_NAMES[int(REGION_EXPANSION_INDEX[r, a])] for a in range(len(CATEGORY_NAMES))}
    for r, region in enumerate(REGIONS)
}


def region_category_prior(region_index: int) -> np.ndarray:
    """Anchor-category probabilities for one region (favourites boosted, everything else possible)."""
    weights = np.ones(len(CATEGORY_NAMES))
    for name in REGION_FAVOURITES[REGIONS[region_index]][0]:
        weights[CATEGORY_NAMES.index(name)] *= FAVOURITE_CATEGORY_BOOST
    return weights / weights.sum()


def region_style_prior(region_index: int) -> np.ndarray:
    """Preferred-style probabilities for one region."""
    weights = np.ones(len(STYLE_NAMES))
    for name in REGION_FAVOURITES[REGIONS[region_index]][1]:
        weights[STYLE_NAMES.index(name)] *= FAVOURITE_STYLE_BOOST
    return weights / weights.sum()
