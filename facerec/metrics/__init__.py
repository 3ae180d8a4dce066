"""Retrieval metrics (:mod:`~facerec.metrics.retrieval`: precision@k, recall@k, MAP@R, the study's
attribute metrics, leave-one-out over a set of embeddings), below both ``facerec.train`` (the
validation metric of every epoch) and ``facerec.eval`` (the study's tables)."""
