"""The plugin manager: isolation of failing plugins, duplicate names, the autoload switch."""

import types

import pytest
import torch

import core
from core import Conditioner, ConditioningShape, PluginError, hookimpl, load_registry
from core.loader import discover


class Dummy(Conditioner):
    """A do-nothing conditioner for registry tests."""

    class Params(core.Params):
        dim: int = 4

    @classmethod
    def reads(cls, params):
        return "label"

    @classmethod
    def produces(cls, params):
        return ConditioningShape(vector=params.dim)

    def forward(self, y):
        return core.Conditioning(vector=torch.zeros(len(y), self.params.dim))

    def unconditional(self, cond):
        return cond


def plugin(name, register):
    module = types.ModuleType(name)
    module.ldm_register = hookimpl(register)
    return module


def test_builtins_load_through_the_entry_point_like_any_plugin(registry):
    entry = registry.get("conditioner", "class_label")
    assert entry.origin.plugin == "builtin" and entry.origin.distribution == "ldm-framework"
    assert registry.frozen
    assert registry.report.failed == []


def test_a_plugin_that_raises_while_registering_is_reported_and_the_others_still_load():
    good = plugin("good", lambda registry: registry.add("dummy", Dummy))

    def half_then_fail(registry):
        registry.add("half", Dummy)
        raise RuntimeError("boom")

    reg = load_registry([plugin("bad", half_then_fail), good], autoload=False)
    assert reg.names("conditioner") == ["dummy"], "a failed plugin's partial registrations must not land"
    [failure] = reg.report.failed
    assert failure.origin.plugin == "bad" and "RuntimeError: boom" in failure.error
    assert [o.plugin for o in reg.report.loaded] == ["good"]


def test_a_misspelled_hook_is_reported_not_ignored():
    module = types.ModuleType("typo")
    module.ldm_regster = hookimpl(lambda registry: None)
    reg = load_registry([module, plugin("good", lambda registry: registry.add("dummy", Dummy))], autoload=False)
    [failure] = reg.report.failed
    assert failure.origin.plugin == "typo" and "ldm_regster" in failure.error
    assert reg.names("conditioner") == ["dummy"]


def test_duplicate_names_are_an_error_naming_both_plugins():
    first = plugin("first", lambda registry: registry.add("dummy", Dummy))
    second = plugin("second", lambda registry: registry.add("dummy", Dummy))
    with pytest.raises(PluginError, match="'dummy' is registered by both plugin 'first' and plugin 'second'"):
        load_registry([first, second], autoload=False)


def test_one_name_may_serve_two_kinds():
    from plugins.identity import IdentityFirstStage

    both = plugin("both", lambda registry: (registry.add("same", Dummy), registry.add("same", IdentityFirstStage)))
    reg = load_registry([both], autoload=False)
    assert reg.get("conditioner", "same").cls is Dummy and reg.get("first_stage", "same").cls is IdentityFirstStage


@pytest.mark.parametrize(
    ("name", "cls", "message"),
    [
        ("os.system", Dummy, "lower case letters"),
        ("Dummy", Dummy, "lower case letters"),
        ("plain", object, "exactly one of core's interfaces"),
    ],
)
def test_malformed_registrations_fail_that_plugin(name, cls, message):
    reg = load_registry([plugin("odd", lambda registry: registry.add(name, cls))], autoload=False)
    [failure] = reg.report.failed
    assert message in failure.error


def test_params_must_derive_from_core_params():
    from pydantic import BaseModel

    class Loose(Dummy):
        class Params(BaseModel):
            dim: int = 4

    reg = load_registry([plugin("loose", lambda registry: registry.add("loose", Loose))], autoload=False)
    assert "must be a subclass of core.Params" in reg.report.failed[0].error


def test_a_frozen_registry_refuses_additions(registry):
    with pytest.raises(RuntimeError, match="frozen"):
        registry.add("late", Dummy)


def test_autoload_switch_keeps_only_our_own_entry_points():
    own = discover(env={"LDM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert own and all(ep.dist.name == "ldm-framework" for ep in own)
    assert set(own) <= set(discover(env={}))


def test_plugin_api_version_check():
    core.require_plugin_api("1.0")
    core.require_plugin_api("1.2")  # Conditioner.fit
    core.require_plugin_api("1.3")  # Conditioner.trainable_by_default
    core.require_plugin_api("1.4")  # ConditioningShape.mismatches
    core.require_plugin_api("1.6")  # Component.original_names
    core.require_plugin_api("1.7")  # Component.diffusers_model, Component.from_diffusers
    core.require_plugin_api("1.8")  # core.data.EpochIndex
    with pytest.raises(core.PluginAPIError, match="needs ldm plugin API 1.9"):
        core.require_plugin_api("1.9")
    with pytest.raises(core.PluginAPIError, match="offers 1.8"):
        core.require_plugin_api("2.0")
    with pytest.raises(ValueError, match="major.minor"):
        core.require_plugin_api("one")
