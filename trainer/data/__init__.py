"""Datasets for the trainer: the :class:`~trainer.data.examples.Example`, readers/writers (JSONL, CoNLL) and
:func:`~trainer.data.load.load_examples`, which picks the reader by file type."""
