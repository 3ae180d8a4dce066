"""Face clustering: photos -> people, without labels (``facerec cluster``).

* :mod:`~facerec.cluster.metrics` -- BCubed and pairwise precision/recall/F against true identities;
* :mod:`~facerec.cluster.knn` -- the k-nearest-neighbour graph from a gallery index kind, queried on Ray;
* :mod:`~facerec.cluster.thresholds` -- the link and merge thresholds from the model's 1:1 calibration;
* :mod:`~facerec.cluster.algorithm` -- shared-neighbour links, then average-linkage merges, never two
  faces of one photo in one person; per-face confidence;
* :mod:`~facerec.cluster.incremental` -- new faces assigned to existing people without re-clustering;
* :mod:`~facerec.cluster.outputs` -- people.parquet, contact sheets, summary.json (atomic);
* :mod:`~facerec.cluster.pipeline` -- detect + embed on Ray Data (crops and embeddings cached), cluster, write.
"""

from facerec.cluster.algorithm import ClusterConfig, Clustering, cluster_embeddings
from facerec.cluster.metrics import bcubed, pairwise_prf

__all__ = ["ClusterConfig", "Clustering", "cluster_embeddings", "bcubed", "pairwise_prf"]
