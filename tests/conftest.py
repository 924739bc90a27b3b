"""Shared test settings: where the fixtures live."""

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def aomei_fixtures() -> Path:
    return FIXTURES / "aomei"
