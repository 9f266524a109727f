"""Optional extras: import them, or say in one line which extra installs them."""

from __future__ import annotations

import warnings

from selfsup.errors import DataError


def require_pyg():
    """PyTorch Geometric (the ``graph`` extra)."""
    try:
        with warnings.catch_warnings():  # its import scripts functions with the deprecated torch.jit.script
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
            import torch_geometric
            import torch_geometric.nn  # noqa: F401
    except ImportError:
        raise DataError("graph data and Deep Graph Infomax need PyTorch Geometric: pip install 'selfsup[graph]'") \
            from None
    return torch_geometric
