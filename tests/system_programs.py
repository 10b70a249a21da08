"""Programs from the system's packages that some tests need (SLURM and munge, Chromium).

Where one is missing, its tests skip and say which programs are missing and how to install them
(`pytest -rs`, the default here, prints the reasons). `.ci/run` installs them and sets
EMFLOW_REQUIRE_SYSTEM_TESTS=1: there a missing program fails its tests instead, so that CI never
passes by skipping them.
"""

from __future__ import annotations

import os
import shutil

import pytest

# Debian puts daemons in /usr/sbin, which is not on a non-root user's PATH.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
REQUIRED = os.environ.get("EMFLOW_REQUIRE_SYSTEM_TESTS") == "1"


def find_program(*names: str) -> str | None:
    """The path of the first of `names` found on PATH or in /usr/sbin, /sbin; None if none is."""
    return next((path for path in (shutil.which(name, path=SEARCH_PATH) for name in names) if path), None)


def require_programs(what: str, names: tuple[str, ...], install: str) -> None:
    """Skip the calling test (fail it under .ci/run) unless every program of `names` is installed."""
    missing = [name for name in names if find_program(name) is None]
    if not missing:
        return
    message = f"{what} need {', '.join(missing)}, not installed here; .ci/run installs them ({install})"
    if REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


def require_chromium() -> str:
    """The headless browser's path (Debian's chromium, or chromium-browser, google-chrome), or skip (fail under .ci/run)."""
    names = ("chromium", "chromium-browser", "google-chrome")
    path = find_program(*names)
    if path is None:
        require_programs("the tests that render pages in a browser", names[:1], "apt-get install chromium")
        raise AssertionError("unreachable: require_programs skips or fails")
    return path
