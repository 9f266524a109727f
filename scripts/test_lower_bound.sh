#!/usr/bin/env bash
# The lower bound of the declared torch range, tested from a built wheel in a clean environment.
#
# 1. Builds the wheel (python -m build; the version from the git tag, setuptools-scm).
# 2. Makes .venv-lower with torch 2.13 (its CPU build), installs the wheel there and its declared
#    dependencies except torchvision and timm: the registries CI reaches offer torchvision only as a
#    CUDA build, which does not import beside torch's CPU build, and timm needs torchvision.
# 3. Checks that the console script and `python -m selfsup list` work from the installed wheel.
# 4. Runs the tests of the losses, the methods, the pretext tasks and the distributed gather there
#    (vision-marked tests skip), against the installed package, not the checkout (python -P).
# The whole suite runs on the newest pair (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ENV=.venv-lower
if [ ! -x $ENV/bin/python ]; then
    "$PYTHON" -m venv $ENV
fi
$ENV/bin/python -m pip install --quiet --upgrade pip build >/dev/null
rm -rf dist/selfsup-*.whl
$ENV/bin/python -m build --wheel --outdir dist . >/dev/null
$ENV/bin/python -m pip install --quiet "torch==2.13.*"
$ENV/bin/python -m pip install --quiet --force-reinstall --no-deps dist/selfsup-*.whl
# The wheel's own requirements (and its test tools), torch's family left out as above.
$ENV/bin/python -m pip install --quiet $($ENV/bin/python - <<'PY'
import re
from importlib.metadata import requires
skip = ("torch", "torchvision", "timm")
print(" ".join(r.replace(" ", "") for r in requires("selfsup") if "extra ==" not in r
               and re.split(r"[<>=!~ ;\[]", r)[0].lower() not in skip))
PY
) pytest pytest-timeout scipy psutil
echo "lower bound: torch $($ENV/bin/python -c 'import torch; print(torch.__version__)'), selfsup $($ENV/bin/python -c 'import selfsup; print(selfsup.__version__)') from $(ls dist/selfsup-*.whl)"
(cd "${TMPDIR:-/tmp}" && "$OLDPWD/$ENV/bin/selfsup" list >/dev/null && "$OLDPWD/$ENV/bin/python" -m selfsup list >/dev/null)
echo "lower bound: selfsup list and python -m selfsup list work from the installed wheel"
exec $ENV/bin/python -P -m pytest -q -p no:cacheprovider -m "not slow" tests/test_losses.py tests/test_methods.py \
    tests/test_instance_methods.py tests/test_pretext.py tests/test_dim.py tests/test_cpc.py tests/test_distributed.py "$@"
