"""The tiny random text encoders, one per family of seed 000: the transformers architecture and the tokenizer.

``tiny`` is BERT with MiniLM's uncased WordPiece vocabulary (from the packaged MiniLM). The other families' tokenizers
are their own transformers tokenizer classes trained in-process on the synthetic sentences (no files, no hub): so a
tiny model tokenizes, pads and numbers positions the way its real family does (RoBERTa: byte-level BPE with a prefix
space per word, ``<pad>`` = 1; SpanBERT: cased WordPiece).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tokenizers import Tokenizer, models, trainers

# transformers 5 exports BertTokenizerFast as a lazy alias its type hints omit; it is the fast tokenizer in 4 and 5.
from transformers import BertTokenizerFast, PreTrainedTokenizerBase, RobertaTokenizerFast  # type: ignore[attr-defined]

from postlens.runtime.config import TINY_ROBERTA, TINY_SPANBERT, TINY_TEXT
from postlens.runtime.words import word_tokenize
from trainer.synth import sentences

# The learners' bound: the synthetic sentences run out of merges before it.
TINY_VOCABULARY_SIZE = 1000
# RoBERTa's special tokens at roberta-base's ids, so padding_idx (1) and the first position (2) are the real ones.
ROBERTA_SPECIAL_TOKENS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}


def _corpus() -> list[str]:
    # Words as the encoder receives them (pre-split, one prefix space each), not as the sentences run.
    return [" ".join(word.text for word in word_tokenize(sentence)) for sentence in sentences()]


def tiny_roberta_tokenizer() -> PreTrainedTokenizerBase:
    untrained = RobertaTokenizerFast(vocab=dict(ROBERTA_SPECIAL_TOKENS), merges=[], add_prefix_space=True)
    return untrained.train_new_from_iterator(_corpus(), TINY_VOCABULARY_SIZE)


def tiny_spanbert_tokenizer() -> PreTrainedTokenizerBase:
    untrained = BertTokenizerFast(do_lower_case=False)
    # tokenizers' WordPiece trainer breaks ties between equally frequent pieces in hash order, which changes from one
    # process to the next; BPE merges do not. So BPE learns the pieces (through BERT's cased normalizer and
    # pre-tokenizer) and WordPiece may use each one to start a word or, as "##piece", to continue one.
    learner = Tokenizer(models.BPE())
    learner.normalizer = untrained.backend_tokenizer.normalizer
    learner.pre_tokenizer = untrained.backend_tokenizer.pre_tokenizer
    learner.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=TINY_VOCABULARY_SIZE, show_progress=False))
    specials = untrained.get_vocab()
    learned = learner.get_vocab()
    pieces = sorted(learned, key=learned.__getitem__)
    tokens = [*sorted(specials, key=specials.__getitem__), *pieces, *(f"##{piece}" for piece in pieces)]
    return BertTokenizerFast(vocab={token: index for index, token in enumerate(tokens)}, do_lower_case=False)


@dataclass(frozen=True)
class TinyFamily:
    model_type: str  # the transformers architecture, built with TextEncoderConfig.tiny sizes
    train_tokenizer: Callable[[], PreTrainedTokenizerBase] | None  # None: the packaged MiniLM's tokenizer


TINY_FAMILIES: dict[str, TinyFamily] = {
    TINY_TEXT: TinyFamily("bert", None),
    TINY_ROBERTA: TinyFamily("roberta", tiny_roberta_tokenizer),
    TINY_SPANBERT: TinyFamily("bert", tiny_spanbert_tokenizer),
}
