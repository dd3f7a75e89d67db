"""The NER model, in data-flow order: preprocess → text_encoder + vision (a family each) → fusion → emissions → CRF
(``crf`` trains it, ``decode`` reads it: Viterbi, span confidences) → grounding (``decode``).

``network.NerNetwork`` assembles the parts from a ``config.ModelConfig``; ``checkpoint`` saves and loads them.
"""
