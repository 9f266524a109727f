"""selfsup: self-supervised representation learning, from a laptop CPU to many GPUs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("selfsup")  # set at build time from the git tag (setuptools-scm)
except PackageNotFoundError:  # the source tree on sys.path without an install
    __version__ = "0+unknown"
