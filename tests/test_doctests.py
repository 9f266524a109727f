"""Every example in the library's docstrings gives what it shows (doctest), so that an example
cannot drift from the code: the outputs they print were worked out by hand or from the papers."""

import doctest
import importlib
import pkgutil

import pytest

import selfsup

MODULES = sorted(info.name for info in pkgutil.walk_packages(selfsup.__path__, "selfsup.")
                 if not info.name.endswith("__main__"))


def test_the_package_has_modules_to_read():
    assert {"selfsup.losses.contrastive", "selfsup.augment.colour", "selfsup.data.idx"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_every_docstring_example_gives_what_it_shows(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in finder.find(module, name):
        if test.examples:
            runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
