"""BCubed and pairwise scores against values computed by hand."""

import numpy as np
import pytest

from facerec.cluster.metrics import bcubed, pairwise_prf
from facerec.errors import ConfigError


def test_bcubed_hand_computed():
    # clusters {a,a,b} {b,b}: items' precision 2/3,2/3,1/3, 1,1 -> 11/15; recall 1,1,1/3, 2/3,2/3 -> 11/15
    pred = [0, 0, 0, 1, 1]
    true = ["a", "a", "b", "b", "b"]
    r = bcubed(pred, true)
    assert r["precision"] == pytest.approx(11 / 15)
    assert r["recall"] == pytest.approx((1 + 1 + 1 / 3 + 2 / 3 + 2 / 3) / 5)
    p, q = r["precision"], r["recall"]
    assert r["f"] == pytest.approx(2 * p * q / (p + q))


def test_bcubed_extremes():
    true = [0, 0, 1, 1]
    assert bcubed(true, true) == {"precision": 1.0, "recall": 1.0, "f": 1.0}
    single = bcubed([0, 1, 2, 3], true)  # every face alone: pure, recall 1/2 per item
    assert (single["precision"], single["recall"]) == (1.0, 0.5)
    one = bcubed([7, 7, 7, 7], true)     # all together: precision 1/2
    assert (one["precision"], one["recall"]) == (0.5, 1.0)


def test_pairwise_hand_computed():
    # predicted pairs: 3 + 1 = 4; true pairs: 1 + 3 = 4; shared: (0,1) and (3,4) = 2
    r = pairwise_prf([0, 0, 0, 1, 1], ["a", "a", "b", "b", "b"])
    assert (r["precision"], r["recall"]) == (0.5, 0.5)
    assert r["f"] == pytest.approx(0.5)


def test_metric_errors():
    with pytest.raises(ConfigError, match="one label per face"):
        bcubed(np.array([0, 1]), np.array([0]))
