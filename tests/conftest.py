"""Suite-wide settings: the digest cache of simaq-factory (``~/.cache/simaq-factory/digests``) goes
to a folder of the test session, so tests neither read a developer's cache nor leave files in it."""

from __future__ import annotations

import os

import pytest

from simaq_factory.store.dataset import DIGEST_CACHE_ENV


@pytest.fixture(scope="session", autouse=True)
def _digest_cache_of_the_session(tmp_path_factory: pytest.TempPathFactory) -> None:
    if DIGEST_CACHE_ENV not in os.environ:  # subprocesses inherit it
        os.environ[DIGEST_CACHE_ENV] = str(tmp_path_factory.mktemp("digest-cache"))
