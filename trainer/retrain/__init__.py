"""Retrain on new labels: ``python -m trainer.retrain`` — labels topic → audit → fine-tuned candidate → two gates →
promoted (exported with its lineage, loaded by Triton) or refused. The whole contract: docs/retraining.md.

1. **Read** the labels topic from the group's committed offsets up to its end offsets at start
   (:mod:`~trainer.retrain.labels`); invalid labels are refused with a reason; the latest of a ``label_id`` wins.
2. **Audit** them against the serving model, source by source (:mod:`~trainer.retrain.audit`): a source (or batch)
   whose disagreement is systematic is quarantined — not trained on, published to the rejected topic with the reason.
3. **Fine-tune** the base (default: the checkpoint behind the newest version) on the clean labels' training slice
   mixed with a replay sample of the base's own training data (:mod:`~trainer.retrain.decision`).
4. **Gate**: the candidate must not be worse on the held-out new labels, nor on the reference set the base carries
   (overall and per type).
5. **Export** a promoted candidate with its lineage (:mod:`~trainer.retrain.lineage`), ask Triton to load it, then
   publish the refusals and commit the offsets — only after the decision, so a run that dies midway reads the same
   labels again. ``--dry-run`` trains and decides, but exports, publishes and commits nothing.

``--history`` prints the lineage, ``--rollback N`` serves version N again as a new newest version, ``--watch`` runs as
a service (:mod:`~trainer.retrain.watch`). Runs are sequential (one ``--watch`` or cron job): two at once would read,
and train on, the same labels.
"""
