"""Finding dataset files: the user's folder, the cache, Debian's packages, upstream mirrors.

Every file lands in the cache atomically (written to a temporary file in the
same folder, checked, then renamed), so an interrupted or corrupt download
never leaves a file under its final name.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from selfsup.errors import DataError, UsageError

log = logging.getLogger(__name__)

CACHE_ENV = "SELFSUP_DATA"
_DEFAULT_CACHE = "~/.cache/selfsup"


class DownloadError(UsageError, OSError):
    """A dataset could not be fetched from any source."""


class ChecksumError(DataError):
    """A file's contents do not have the published checksum."""


def cache_dir(dataset: str) -> Path:
    """``$SELFSUP_DATA/<dataset>`` (default ``~/.cache/selfsup/<dataset>``); not created here."""
    return Path(os.environ.get(CACHE_ENV) or _DEFAULT_CACHE).expanduser() / dataset


def file_digest(path: Path, algorithm: str, *, decompress: bool = False) -> str:
    """Hex digest of a file, or of its gzip-decompressed contents when ``decompress``."""
    digest = hashlib.new(algorithm)
    with (gzip.open if decompress else open)(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, algorithm: str, expected: str, *, decompress: bool = False, label: str | None = None) -> None:
    """Raise ChecksumError naming the file, expected and actual digest on a mismatch."""
    actual = file_digest(path, algorithm, decompress=decompress)
    if actual != expected:
        what = "decompressed contents of " if decompress else ""
        raise ChecksumError(
            f"{algorithm} of the {what}{label or path} is {actual}, expected {expected}: the file is corrupt "
            "or not the published one; it was not kept, retry the download or place the right file yourself"
        )


def fetch_url(url: str, dest: Path, *, progress: bool = True) -> None:
    """Download ``url`` to ``dest`` (written whole; the caller renames it into place)."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], disable=not progress) as bar:
            while block := response.read(1 << 20):
                out.write(block)
                bar.update(len(block))


def apt_fetch(package: str, workdir: Path) -> Path | None:
    """Unpack Debian ``package`` into ``workdir`` without root; its file tree, or None if unavailable.

    Runs ``apt-get download <package>`` then ``dpkg -x``: both work as an
    ordinary user wherever Debian's archive is reachable.
    """
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        return None
    try:
        subprocess.run(["apt-get", "download", package], cwd=workdir, check=True, capture_output=True, timeout=300)
        debs = sorted(workdir.glob(f"{package}_*.deb"))
        if not debs:
            return None
        tree = workdir / "tree"
        subprocess.run(["dpkg", "-x", str(debs[0]), str(tree)], check=True, capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as err:
        stderr = getattr(err, "stderr", b"") or b""
        log.info("apt-get download %s failed (%s): %s", package, err, stderr.decode(errors="replace").strip())
        return None
    return tree


def _place(part: Path, dest: Path, check: tuple[str, str, bool] | None, label: str) -> None:
    if check is not None:
        verify(part, check[0], check[1], decompress=check[2], label=label)
    os.replace(part, dest)


def install(source: Path, dest: Path, check: tuple[str, str, bool] | None) -> None:
    """Copy ``source`` to ``dest`` atomically, verifying ``check = (algorithm, digest, decompress)`` first."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".install-") as tmp:
        part = Path(tmp) / dest.name
        shutil.copyfile(source, part)
        _place(part, dest, check, str(source))


def download(url: str, dest: Path, check: tuple[str, str, bool], *, progress: bool = True) -> None:
    """Fetch ``url`` into ``dest`` atomically after verifying ``check = (algorithm, digest, decompress)``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
        part = Path(tmp) / dest.name
        try:
            fetch_url(url, part, progress=progress)
        except OSError as err:
            raise DownloadError(f"could not download {url} ({err}); download it by hand into {dest.parent}") from err
        _place(part, dest, check, url)
