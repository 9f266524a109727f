"""Fixtures shared by several test files."""

import os

import pytest


@pytest.fixture
def restore_umask():
    """Put the process umask back after a test that sets its own."""
    old = os.umask(0o022)
    yield
    os.umask(old)
