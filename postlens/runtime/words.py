"""The one word tokenizer for social text, with character offsets.

Training, evaluation and serving all split posts with :func:`word_tokenize`, so the words the model tags are the
words whose offsets end up in the index. Torch-free on purpose: the Triton preprocessing model and the stream
import it.

Rules, in priority order (the first that matches at a position wins):

- URLs (``http(s)://`` or ``www.``; trailing sentence punctuation is not part of the URL, balanced parentheses are),
  e-mail addresses, ``@mentions``, ``#hashtags``, ``$CASHTAGS`` and HTML entities (``&amp;``) are one word each;
- emoji are one word per grapheme cluster, so ZWJ families, skin tones, flags and keycaps stay whole;
- abbreviations with dots (``U.S.``) and numbers with separators (``3.5``, ``1,000``, ``12:30``, ``50%``);
- every Han, Hiragana or Katakana character is its own word (the character-level BMES Chinese data expects this);
- English clitics are split off the way the Twitter CoNLL data does (``Cruz's`` → ``Cruz`` ``'s``, ``don't`` →
  ``do`` ``n't``); other apostrophes, hyphens and ``&`` inside a word keep it whole (``O'Neill``, ``post-Katrina``,
  ``AT&T``);
- a run of ``.``, ``!``, ``?`` or ``…`` is one word (``?!``, ``...``); any other punctuation or symbol character
  repeated is one word (``--``), otherwise each is its own;
- white space, control and invisible format characters (zero-width space, stray variation selectors) separate
  words and are never part of one.

Offsets are on the raw string (no normalisation), so ``text[w.start:w.end] == w.text`` always.
"""

from __future__ import annotations

import regex
from pydantic import BaseModel, ConfigDict


class Word(BaseModel):
    """One word of a post: ``text == post_text[start:end]``."""

    model_config = ConfigDict(frozen=True)

    text: str
    start: int
    end: int


# Bump whenever a rule changes: checkpoints record it, and evaluation/serving refuse a mismatch.
WORD_TOKENIZER_VERSION = "1"

_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}\u30FC"  # ー (prolonged sound mark) is script Common but part of kana words
_WORD_CHAR = rf"[[\p{{L}}\p{{M}}\p{{N}}_]--[{_CJK}]]"
_CLITIC_END = r"(?:s|re|ve|ll|d|m)"
_APOSTROPHE = r"['’]"

URL_PREFIXES = ("http://", "https://", "www.")  # what starts a URL word (the pattern below, word shapes)
_URL_START = "|".join(regex.escape(prefix) for prefix in URL_PREFIXES)
_URL_CHAR = r"[^\s()<>\"]"
_URL_PARENS = r"\([^\s()<>\"]*\)"
_URL_LAST = r"[^\s()<>\"'.,;:!?\[\]{}…]"

_PATTERN = regex.compile(
    "|".join(
        [
            # URL: may not end in sentence punctuation, so "see http://x.co/a." keeps the full stop apart.
            rf"(?:{_URL_START})(?:{_URL_PARENS}|{_URL_CHAR})*(?:{_URL_PARENS}|{_URL_LAST})",
            r"[\p{L}\p{N}._%+-]+@[\p{L}\p{N}-]+(?:\.[\p{L}\p{N}-]+)+",  # e-mail
            rf"[@#]{_WORD_CHAR}+",  # mention, hashtag
            r"\$[A-Za-z]{1,6}(?![A-Za-z])",  # cashtag
            # HTML entity left in by tweet dumps (&amp; &#39;); the common ones also without their ";"
            r"&(?:[a-z]{2,8}|#[0-9]{1,7});|&(?:amp|lt|gt|quot)(?![a-z])",
            r"[0-9#*]\uFE0F?\u20E3",  # keycap emoji
            r"(?=\p{Extended_Pictographic}|\p{Regional_Indicator})\X",  # emoji cluster (ZWJ, modifiers, flags)
            r"(?:\p{L}\.){2,}(?!\p{L})",  # abbreviation: U.S., e.g.
            r"\p{Nd}+(?:[.,:/]\p{Nd}+)+%?|\p{Nd}+%",  # number with separators or percent
            rf"[{_CJK}]",
            rf"{_WORD_CHAR}+?(?=n{_APOSTROPHE}t(?!{_WORD_CHAR}))",  # "do" of "don't"
            rf"n{_APOSTROPHE}t(?!{_WORD_CHAR})",
            rf"{_APOSTROPHE}{_CLITIC_END}(?!{_WORD_CHAR})",
            # word: joined by hyphen/ampersand/apostrophe, but an apostrophe that starts a clitic ends the word
            rf"{_WORD_CHAR}+(?:(?:[-&]|{_APOSTROPHE}(?!{_CLITIC_END}(?!{_WORD_CHAR})))(?={_WORD_CHAR}){_WORD_CHAR}+)*",
            r"[.!?…]+",
            r"([\p{P}\p{S}])\1*",
            r"[^\s\p{Cc}\p{Cf}]",  # anything else visible, one character at a time
        ]
    ),
    flags=regex.V1 | regex.IGNORECASE,
)


def word_tokenize(text: str) -> list[Word]:
    """Split ``text`` into words with character offsets (see the module docstring for the rules)."""
    return [Word(text=match.group(), start=match.start(), end=match.end()) for match in _PATTERN.finditer(text)]


def is_url(text: str) -> bool:
    """Whether a word is a URL (the tokenizer keeps a URL one word)."""
    return text.lower().startswith(URL_PREFIXES)
