import itertools

import pytest

from postlens.runtime.words import word_tokenize


def words(text: str) -> list[str]:
    tokens = word_tokenize(text)
    for word in tokens:  # the offsets are what the index stores: they must give the word back
        assert text[word.start : word.end] == word.text
    return [word.text for word in tokens]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "RT @jonathanchait: How post-Katrina New Orleans proved it",
            ["RT", "@jonathanchait", ":", "How", "post-Katrina", "New", "Orleans", "proved", "it"],
        ),
        ("#NBAAwards tonight with @Lakers_fan22!", ["#NBAAwards", "tonight", "with", "@Lakers_fan22", "!"]),
        (
            "read https://example.com/a/b?x=1&y=%20z#frag. then",
            ["read", "https://example.com/a/b?x=1&y=%20z#frag", ".", "then"],
        ),
        ("(see www.wiki.org/Foo_(bar))", ["(", "see", "www.wiki.org/Foo_(bar)", ")"]),
        ("truncated http://t.co/…", ["truncated", "http://t.co/", "…"]),
        ("family 👨‍👩‍👧‍👦 in 🇫🇷 👍🏽👍🏽 1️⃣", ["family", "👨‍👩‍👧‍👦", "in", "🇫🇷", "👍🏽", "👍🏽", "1️⃣"]),
        ("📷Bookstore", ["📷", "Bookstore"]),
        ("我爱北京 Tokyo東京タワー", ["我", "爱", "北", "京", "Tokyo", "東", "京", "タ", "ワ", "ー"]),
        ("Ted Cruz's plan, don't", ["Ted", "Cruz", "'s", "plan", ",", "do", "n't"]),
        ("O'Neill’s AT&T", ["O'Neill", "’s", "AT&T"]),
        (
            "the U.S. paid $3.5 or 1,000 (50%) at 12:30",
            ["the", "U.S.", "paid", "$", "3.5", "or", "1,000", "(", "50%", ")", "at", "12:30"],
        ),
        ("wow?!... -- ok", ["wow", "?!...", "--", "ok"]),
        ("$AAPL up", ["$AAPL", "up"]),
        (
            "salt &amp; pepper --&gt; &#39;x &amp &Co",
            ["salt", "&amp;", "pepper", "--", "&gt;", "&#39;", "x", "&amp", "&", "Co"],
        ),
        ("mail a.b@c.co.uk now", ["mail", "a.b@c.co.uk", "now"]),
    ],
)
def test_social_text_splits_into_expected_words(text: str, expected: list[str]) -> None:
    assert words(text) == expected


def test_accents_precomposed_and_combining_stay_inside_the_word() -> None:
    assert words("café Zoë naïve") == ["café", "Zoë", "naïve"]
    decomposed = "cafe\u0301 Zoe\u0308"  # e + combining accent: offsets are on the raw, unnormalized string
    assert words(decomposed) == ["cafe\u0301", "Zoe\u0308"]


def test_invisible_characters_separate_words_and_belong_to_none() -> None:
    assert words("a\u200bb\u00a0c\td\n\ufeffe") == ["a", "b", "c", "d", "e"]


def test_every_visible_character_is_in_some_word() -> None:
    text = "RT @a_b: ¿Qué? «Zürich» 🤷🏻‍♀️ ¯\\_(ツ)_/¯ <3 ™ x^2 — 東京 #tag"
    covered = {i for word in word_tokenize(text) for i in range(word.start, word.end)}
    visible = {i for i, char in enumerate(text) if not char.isspace()}
    assert visible <= covered
    assert words(text)  # and offsets round-trip


def test_words_are_ordered_and_disjoint() -> None:
    text = "@x:#y http://z.co/q?a=1👍🏽日本's don't"
    tokens = word_tokenize(text)
    assert all(a.end <= b.start for a, b in itertools.pairwise(tokens))
