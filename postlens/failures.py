"""Every kind of failure PostLens records, in one place: the ``error.kind`` of a dead letter (by stage), the
``status`` of an image that could not be used, and the label values of the worker's failure metrics, which the
Grafana dashboards group by.

``StrEnum``: a member is its string value wherever it is written (JSON, Elasticsearch, Prometheus labels), so the
values are the contract and must not change; a new kind is a new member.
"""

from __future__ import annotations

from enum import StrEnum


class IngestFailure(StrEnum):
    """Why a message is not a post the worker can process (stage ``ingest``)."""

    EMPTY = "empty"  # no value
    OVERSIZE = "oversize"  # over max_post_bytes, or text over max_text_chars
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    INVALID_NUMBER = "invalid_number"  # an integer of more digits than CPython converts (4,300)
    INVALID_UNICODE = "invalid_unicode"  # lone surrogates
    TOO_DEEP = "too_deep"
    SCHEMA = "schema"
    EMPTY_TEXT = "empty_text"


class FetchFailure(StrEnum):
    """Why an image was not used (its post goes on without it; never a dead letter)."""

    TIMEOUT = "timeout"
    HTTP_404 = "http_404"
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    HTTP_ERROR = "http_error"
    DNS_ERROR = "dns_error"
    CONNECT_ERROR = "connect_error"
    SSRF_BLOCKED = "ssrf_blocked"
    INVALID_URL = "invalid_url"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    REDIRECT_LOOP = "redirect_loop"
    TOO_LARGE = "too_large"
    NOT_IMAGE = "not_image"
    BOMB = "bomb"
    TRUNCATED = "truncated"
    CORRUPT = "corrupt"
    POISON = "poison"  # workers died decoding it (the decode marker, postlens.io.image_cache): never decoded again
    FETCH_ERROR = "fetch_error"  # anything else, unforeseen


class InferFailure(StrEnum):
    """Why the model gave no prediction for one post (stage ``infer``)."""

    MODEL_REFUSED = "model_refused"  # the model refused the input (INVALID_ARGUMENT, text not Unicode)
    MODEL_ERROR = "model_error"  # its execution failed for this post alone, with the model ready
    BAD_ANSWER = "bad_answer"  # it answered something that is not a prediction
    TIMEOUT = "timeout"  # it did not answer this post in time, alone, while it answered others


class IndexFailure(StrEnum):
    """Why the sink refused one post for good (stage ``index``); the sink's own reason is in the message."""

    DOCUMENT_REFUSED = "document_refused"  # one of the post's documents (a mapping or parsing error)
    REQUEST_REFUSED = "request_refused"  # a whole request holding only this post (400, 413…)
    SERIALIZATION = "serialization"  # the client could not encode the post's documents


class InternalFailure(StrEnum):
    """A fault nobody foresaw, narrowed down to this one post by splitting its batch (any stage)."""

    INTERNAL_ERROR = "internal_error"


class LabelFailure(StrEnum):
    """Why a label is not trained on (stage ``label``, topic ``postlens.labels.rejected``): refused by
    ``trainer.retrain`` or, for an annotation that does not convert, by ``trainer.label``. A label whose image cannot be
    used says ``image_`` + its :class:`FetchFailure` (or ``image_outside_root``, ``image_missing``); a text refused as a
    post's would be says the :class:`IngestFailure` (``empty_text``, ``oversize``)."""

    EMPTY = "empty"  # no value
    INVALID_JSON = "invalid_json"
    SCHEMA = "schema"
    CONVERSION = "conversion"  # spans that cover no word, or overlap once mapped to words
    IMAGE_OUTSIDE_ROOT = "image_outside_root"
    IMAGE_MISSING = "image_missing"
    QUARANTINED = "quarantined"  # the audit: the source's labels contradict the model systematically
    # trainer.label: an annotation that does not make a label
    SPAN_MISMATCH = "span_mismatch"
    NOT_A_POSTLENS_TASK = "not_a_postlens_task"
    BOX_IMAGE = "box_image"
    BOX_ROTATED = "box_rotated"
    RESULT = "result"
    BOX_UNLINKED = "box_unlinked"
    BOX_LINK = "box_link"


def image_failure(kind: FetchFailure | str) -> str:
    """The label-refusal kind of an image that could not be used."""
    return f"image_{kind}"


FailureKind = IngestFailure | FetchFailure | InferFailure | IndexFailure | InternalFailure
DEAD_LETTER_KINDS: frozenset[str] = frozenset(
    kind for kinds in (IngestFailure, InferFailure, IndexFailure, InternalFailure) for kind in kinds
)
