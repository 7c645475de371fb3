"""Model loading and inference for sentiment and NER. Knows nothing of Celery or SQL.

Import from the modules themselves (`worker.nlp.sentiment`, `worker.nlp.ner`, `worker.nlp.types`):
this package file stays empty so that the CLI can use the result types without importing torch.
"""
