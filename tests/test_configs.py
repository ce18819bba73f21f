"""Every shipped config validates against the installed components."""

import json

import pytest

from core.validation import validate_task
from tasks.catalog import spec_models
from tests.conftest import ROOT

CONFIGS = sorted((ROOT / "configs").glob("*.json"))


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"inspect.json", "digits_autoencoder.json"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path, registry):
    spec = validate_task(json.loads(path.read_text()), spec_models(), registry, source=str(path))
    assert spec.name and spec.spec_version == 1
