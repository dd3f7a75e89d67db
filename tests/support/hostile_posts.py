"""Post payloads a hostile producer may send: any structure, nesting, types, sizes and encodings, ids of every
length and character (hypothesis strategies, for the ingest property test and the hostile-stream test)."""

from __future__ import annotations

import json

from hypothesis import strategies as st

# Every code point, lone surrogates included (a JSON "\ud800" escape decodes to one).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=300)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(any_text, children, max_size=5),
    max_leaves=40,
)
ids = st.one_of(
    any_text, st.text(min_size=200, max_size=700), st.integers(), st.floats(), st.booleans(), st.none(), json_values
)
posts = st.fixed_dictionaries(
    {"id": ids, "text": st.one_of(any_text, st.text(min_size=4990, max_size=5010), json_values)},
    optional={
        "images": st.one_of(st.lists(any_text, max_size=8), json_values),
        "created_at": st.one_of(any_text, st.integers(), st.datetimes().map(str), json_values),
        "author": st.one_of(any_text, json_values),
        "lang": json_values,
        "meta": json_values,
        "extra": json_values,
    },
)
as_bytes = st.sampled_from(
    [
        lambda value: json.dumps(value).encode(),  # ASCII with \u escapes (lone surrogates as "\ud800")
        lambda value: json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"),
        lambda value: json.dumps(value, ensure_ascii=False).encode("utf-16", "surrogatepass"),
        lambda value: b"\xef\xbb\xbf" + json.dumps(value).encode(),  # a BOM
        lambda value: json.dumps(value).encode()[:-1],  # cut short
    ]
)
payloads = st.one_of(
    st.tuples(posts, as_bytes).map(lambda pair: pair[1](pair[0])),
    st.tuples(json_values, as_bytes).map(lambda pair: pair[1](pair[0])),
    st.binary(max_size=2000),
    st.integers(1, 40_000).map(lambda depth: b'{"id": "x", "text": "t", "meta": ' + b"[" * depth + b"]" * depth + b"}"),
    st.integers(60_000, 70_000).map(lambda size: json.dumps({"id": "big", "text": "x" * size}).encode()),
    st.none(),
)
