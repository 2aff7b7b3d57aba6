"""Shared fixtures for the data-layer tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A TFDS data dir holding the prepared `digits` dataset, built once per session."""
    from vitx.data.builders import ensure_built

    data_dir = tmp_path_factory.mktemp("tfds")
    ensure_built("digits", str(data_dir))
    return str(data_dir)
