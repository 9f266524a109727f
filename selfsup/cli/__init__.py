"""``selfsup`` command line: pretrain | sweep | evaluate | embed | export | verify | pack | plot | report | list
(also ``python -m selfsup``).

Errors a user can fix (a missing file, an unknown key, a bad value, a corrupt data file) are
printed as one line ``selfsup: error: ...`` with exit status 2; a run that diverges (NaN/Inf)
stops with ``selfsup: training diverged: ...`` and exit status 3; set ``SELFSUP_DEBUG=1`` for
the traceback. Anything else is a bug and keeps its traceback.

Unlike the library, the command line changes one process-wide setting, and says so: it keeps
freed memory in the process (``selfsup.engine.tune_allocator``), which makes CPU training steps
up to 1.3x faster; ``SELFSUP_MALLOC=default`` leaves glibc's settings alone.

Read in this order: ``arguments`` (every command's arguments), ``commands`` (pretrain, embed, export,
verify, pack, plot, report, sweep, list), ``evaluate`` (every protocol of ``selfsup evaluate``) and
``common`` (the checkpoint loaded, the data an evaluation reads, where results go); ``main`` below turns
the errors a user can fix into one line.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

from selfsup.cli import common
from selfsup.cli.arguments import parse_args, parser
from selfsup.errors import NonFiniteLossError, Preempted, UsageError

USAGE_ERRORS = (UsageError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        with _one_line_warnings():
            return args.func(args)
    except USAGE_ERRORS as error:
        if os.environ.get("SELFSUP_DEBUG"):
            raise
        print(f"selfsup: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        if os.environ.get("SELFSUP_DEBUG"):
            raise
        print(f"selfsup: training diverged: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        if os.environ.get("SELFSUP_DEBUG"):
            raise
        print("selfsup: interrupted; what was written is whole (a checkpoint is replaced only once the next one is "
              "complete): `pretrain ... --resume` continues a run, the same `sweep` command its cut runs",
              file=sys.stderr)
        return 130
    except Preempted as error:
        print(f"selfsup: {error} (exit status {Preempted.EXIT_STATUS}: requeue me)", file=sys.stderr)
        return Preempted.EXIT_STATUS
    except RuntimeError as error:
        if os.environ.get("SELFSUP_DEBUG") or not _peer_failed(error):
            raise
        rank = os.environ.get("RANK", "?")
        print(f"selfsup: rank {rank} stops: another rank of this job stopped first ({str(error).splitlines()[0][:160]}); "
              f"the launcher's report names it. The last checkpoint written is whole: continue with --resume",
              file=sys.stderr)
        return 4


@contextlib.contextmanager
def _one_line_warnings():
    """selfsup's own warnings (a skipped file, a warm-up longer than the run) as one line each, ``selfsup:
    warning: ...``, written above a progress bar rather than through it; Python's default adds the warning's
    file and the source line that raised it, which say nothing to a user. Other libraries' warnings keep
    their form (a bug report wants it)."""
    shown = warnings.showwarning
    package = str(Path(__file__).resolve().parent.parent)

    def show(message, category, filename, lineno, file=None, line=None):
        if not (category.__module__.startswith("selfsup") or str(filename).startswith(package)):
            return shown(message, category, filename, lineno, file, line)
        from tqdm import tqdm

        tqdm.write(f"selfsup: warning: {message}", file=file or sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _peer_failed(error: RuntimeError) -> bool:
    """Whether a collective failed because another rank's process is gone (gloo's and NCCL's words)."""
    text = str(error)
    return any(words in text for words in ("Connection reset by peer", "Connection closed by peer",
                                            "NCCL communicator was aborted", "Broken pipe"))


__all__ = ["common", "main", "parse_args", "parser"]
