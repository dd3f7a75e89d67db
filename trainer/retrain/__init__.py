"""Retrain on new labels: ``python -m trainer.retrain`` — labels topic → fine-tuned candidate → promoted if not worse.

One bounded run, not a daemon (:func:`trainer.retrain.run.retrain`):

1. **Read** the labels topic from the group's committed offsets up to its end offsets at start (``--max-labels``
   stops earlier, ``--from-beginning`` re-reads everything). Each message must be a
   :class:`~postlens.schemas.Label` that converts to an :class:`~trainer.data.examples.Example` whose images load
   (URLs through postlens' SSRF-safe fetcher and Redis cache; local paths under ``--image-root``). A message that
   fails is refused with a reason — nothing is dropped silently. For a repeated label id the latest message wins.
   (:mod:`~trainer.retrain.labels`)
2. **Split** the labels by a hash of their id, so a label stays in its slice from run to run: a held-out slice
   (plus ``--valid``) is the evaluation set, a tune slice drives early stopping and calibration, the rest (plus
   ``--extra-train``) is fine-tuned on. (:mod:`~trainer.retrain.decision`)
3. **Fine-tune** the base checkpoint (``--base``; default: the checkpoint the newest version in the model repository
   was exported from) with its own configuration and ``--set`` overrides of the ``train``/``loss`` sections.
4. **Decide**: base and candidate are scored on the same evaluation set; the candidate is promoted — exported as
   the next version of the Triton model, which Triton then loads — when its entity F1 ≥ base F1 − tolerance.
5. **Commit**: refused labels are published to the rejected-labels topic as dead letters and the consumed offsets
   are committed only after the decision, and only once Kafka has the refusals, so a run that dies midway reads
   the same labels again. ``--dry-run`` trains and decides, but exports, publishes and commits nothing.

Exit codes (:mod:`~trainer.retrain.report`): 0 decided (promoted, or kept the base); 3 too few valid labels (nothing
committed); 1 failed (nothing committed); 4 promoted, but the Triton serving the repository did not load the new
version (offsets committed). Runs are meant to be sequential (e.g. from cron): two at once would read, and train
on, the same labels.
"""
