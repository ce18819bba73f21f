"""Property tests: any JSON document given as a spec either validates or is the one-sentence
exit-2 error, never another exception; a valid spec survives a round trip through its
resolved JSON unchanged."""

import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import UserError
from tasks.cli.catalog import spec_models
from tasks.runs.validation import validate_task
from tests.conftest import ROOT

CONFIGS = {path.name: json.loads(path.read_text()) for path in sorted((ROOT / "configs").glob("*.json"))}


def _keys(value):
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys(item)


KEYS = sorted({key for spec in CONFIGS.values() for key in _keys(spec)})
scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(
    scalars | st.sampled_from(KEYS),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*prefix, i))


@st.composite
def mutated_specs(draw):
    """A shipped config with a few random edits: a value replaced, a key dropped or added."""
    spec = copy.deepcopy(CONFIGS[draw(st.sampled_from(sorted(CONFIGS)))])
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(spec) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = spec
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "drop" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS) | st.text(max_size=8))] = draw(json_values)
    return spec


def outcome(document, registry):
    """The validated spec, or None after the clear error; anything else raises."""
    try:
        return validate_task(document, spec_models(), registry, source="fuzz.json")
    except UserError as exc:
        message = str(exc)
        assert message and "Traceback" not in message
        return None


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(document=json_values)
def test_any_json_document_validates_or_is_the_clear_error(document, registry):
    outcome(document, registry)


@FUZZ
@given(document=mutated_specs())
def test_edited_configs_validate_or_are_the_clear_error_and_valid_ones_round_trip(document, registry):
    spec = outcome(document, registry)
    if spec is not None:
        resolved = spec.model_dump(mode="json")
        again = validate_task(json.loads(json.dumps(resolved)), spec_models(), registry)
        assert again.model_dump(mode="json") == resolved


def test_every_shipped_config_round_trips_through_its_resolved_json(registry):
    for name, document in CONFIGS.items():
        resolved = validate_task(document, spec_models(), registry).model_dump(mode="json")
        assert validate_task(resolved, spec_models(), registry).model_dump(mode="json") == resolved, name
