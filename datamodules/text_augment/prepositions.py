"""Fixed, frequency-weighted preposition inventory for REPLACE-style relation swaps.

FSC-CLIP replaces a preposition by one drawn from a fixed list weighted by corpus frequency. This is
vlzoo's own list (spatial and relational prepositions that occur in image captions; archaic, temporal
or non-relational ones such as "unto", "till", "during", "as", "like", "about" are left out). Weights
are English frequencies per million words from wordfreq 3.1 (R. Speer, CC BY-SA 4.0), rounded, computed
once and frozen here so that sampling does not depend on an installed package.
"""

from __future__ import annotations

PREPOSITION_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("aboard", 14),
    ("above", 158),
    ("across", 178),
    ("after", 1290),
    ("against", 479),
    ("along", 240),
    ("alongside", 28),
    ("amid", 9),
    ("among", 204),
    ("around", 589),
    ("at", 5010),
    ("atop", 4),
    ("before", 851),
    ("behind", 195),
    ("below", 112),
    ("beneath", 17),
    ("beside", 16),
    ("between", 589),
    ("beyond", 96),
    ("by", 4570),
    ("down", 759),
    ("for", 10200),
    ("from", 4270),
    ("in", 18600),
    ("inside", 155),
    ("into", 1290),
    ("near", 195),
    ("of", 25100),
    ("off", 851),
    ("on", 8130),
    ("onto", 59),
    ("opposite", 42),
    ("outside", 178),
    ("over", 1200),
    ("past", 229),
    ("through", 741),
    ("throughout", 98),
    ("to", 26900),
    ("toward", 52),
    ("towards", 115),
    ("under", 537),
    ("underneath", 12),
    ("up", 2450),
    ("upon", 132),
    ("with", 7080),
    ("within", 275),
    ("without", 490),
    ("next to", 492),
    ("in front of", 187),
    ("on top of", 350),
    ("close to", 227),
    ("out of", 2190),
    ("away from", 380),
    ("far from", 294),
)

# Complex prepositions "P (the) N P": in a caption like "a dog in front of a car" the noun ("front")
# is not an entity and the whole phrase is one relation (as in SceneGraphParser's phrasal-prep rule).
PHRASAL_PREPOSITIONS: frozenset[str] = frozenset(
    {
        "in front of",
        "in back of",
        "on top of",
        "on the top of",
        "on side of",
        "on the side of",
        "in the middle of",
        "in spite of",
        "in addition to",
        "on account of",
        "in regard to",
        "with regard to",
        "in reference to",
    }
)
