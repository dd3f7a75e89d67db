"""Datasets for the trainer: the shared word tokenizer, tagging schemes, and readers/writers (JSONL, CoNLL)."""
