"""facerec: face image retrieval at cluster scale on Ray.

Stages (each reads the folder the previous one wrote):
photos -> crops + Parquet table (``facerec.data``) -> checkpoints (``facerec.train``)
-> embeddings + index (``facerec.index``) -> tables (``facerec.eval``) and the HTTP API (``facerec.serve``).
"""

__version__ = "0.1.0"
