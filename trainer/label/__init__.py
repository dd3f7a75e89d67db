"""Labels from people: send the posts the model is least sure of to Label Studio, stream the annotations back.

``python -m trainer.label push`` picks posts from Elasticsearch by uncertainty and sends them, with the model's
entities and grounded boxes as predictions, to a Label Studio project; ``pull`` (polling) and ``webhook`` (a receiver
Label Studio calls) turn completed annotations into labels on ``postlens.labels``, which ``trainer.retrain`` reads.
Torch-free: it needs only Elasticsearch, Kafka and Label Studio.
"""
