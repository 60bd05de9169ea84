"""Generated model cards: which classes a card lists (`listing`), what it says (`render`), and
its upload as a pull request (`upload`). The step that writes them is
`probex_core.pipeline.cards`."""

from probex_core.cards.listing import (
    MIN_CONFIDENCE,
    TARGET_PRECISION,
    Listing,
    choose_threshold,
    listing_scores,
    tree_listings,
)
from probex_core.cards.render import CARD_FILE, GENERATED_TAG, ModelFacts, TreeFacts, render_card

__all__ = [
    "CARD_FILE",
    "GENERATED_TAG",
    "MIN_CONFIDENCE",
    "TARGET_PRECISION",
    "Listing",
    "ModelFacts",
    "TreeFacts",
    "choose_threshold",
    "listing_scores",
    "render_card",
    "tree_listings",
]
