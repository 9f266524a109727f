"""Graph files: the Planetoid unpickler refuses every name outside its exact allowlist."""

import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from selfsup.data.graphs import _read_pickle, planetoid
from selfsup.errors import DataError


def _global(module: str, name: str) -> bytes:
    """A protocol-4 pickle of the object ``module``/``name`` names (SHORT_BINUNICODE x2, STACK_GLOBAL)."""
    text = b"".join(b"\x8c" + bytes([len(s.encode())]) + s.encode() for s in (module, name))
    return b"\x80\x04" + text + b"\x93."


def test_a_dotted_name_that_reaches_a_function_through_an_allowed_module_is_refused(tmp_path):
    # Protocol 4 resolves a dotted name attribute by attribute: scipy.sparse -> _csr -> np -> ... -> read_array.
    assert pickle.loads(_global("scipy.sparse", "_csr.np.lib.format.read_array")) is np.lib.format.read_array
    (tmp_path / "ind.cora.x").write_bytes(_global("scipy.sparse", "_csr.np.lib.format.read_array"))
    with pytest.raises(DataError, match=r"ind\.cora\.x: refusing to load scipy\.sparse\._csr\.np\.lib\.format\."):
        planetoid(tmp_path, "cora")
    (tmp_path / "ind.cora.x").write_bytes(_global("scipy.sparse._csr", "csr_matrix"))  # the exact name: allowed
    assert _read_pickle(tmp_path / "ind.cora.x") is sp.csr_matrix
