"""facerec.index.check_kinds: the one check of a configuration's index kinds (gallery builder and
evaluation's gallery config both use it)."""

import pytest

from facerec.errors import ConfigError
from facerec.index import INDEXES, check_kinds


def test_registered_kinds_pass():
    check_kinds(INDEXES.names(), {"hnsw": {"M": 8}})


@pytest.mark.parametrize("kinds, params, message", [
    ([], None, r"kinds=\[\] is invalid: expected at least one index kind of \['exact'"),
    (["nosuch"], None, r"index kind='nosuch' is invalid: expected one of"),
    (["exact", "exact"], None, r"expected each kind once"),
    (["exact"], {"hnsw": {}}, r"index_params=\['hnsw'\] is invalid: expected parameters only for the kinds built \['exact'\]"),
])
def test_bad_kinds_are_named(kinds, params, message):
    with pytest.raises(ConfigError, match=message):
        check_kinds(kinds, params)
