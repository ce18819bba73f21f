"""The docs cite what exists: the plugin example in CONTRIBUTING.md is the tested example
plugin, word for word, and every test RELIABILITY.md names is there."""

import re

from tests.conftest import ROOT


def test_contributing_blocks_match_the_files_they_name():
    text = (ROOT / "CONTRIBUTING.md").read_text()
    blocks = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```\n", text, flags=re.S)
    assert {path for path, _ in blocks} == {
        "tests/plugins/ldm-plugin-example/pyproject.toml",
        "tests/plugins/ldm-plugin-example/ldm_plugin_example.py",
        "tests/plugins/ldm-plugin-example/test_ldm_plugin_example.py",
    }
    for path, body in blocks:
        assert body == (ROOT / path).read_text(), f"CONTRIBUTING.md's copy of {path} is out of date"


def test_every_test_reliability_md_cites_exists():
    cited = set(re.findall(r"`(tests/[\w/]+\.py)::(\w+)", (ROOT / "RELIABILITY.md").read_text()))
    assert len(cited) >= 30
    missing = [
        f"{path}::{name}"
        for path, name in sorted(cited)
        if not re.search(rf"^\s*def {name}\(", (ROOT / path).read_text(), flags=re.M)
    ]
    assert missing == []
