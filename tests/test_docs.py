"""The plugin example in CONTRIBUTING.md is the tested example plugin, word for word."""

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
