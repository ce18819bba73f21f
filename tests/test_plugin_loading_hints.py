"""A plugin implementing a hook that does not exist is reported with the nearest real hook's name."""

import types

from core import hookimpl, load_registry
from tests.test_loading import Dummy, plugin


def plugin_with_hook(name, hook):
    """A module named ``name`` whose only hook implementation is called ``hook``."""
    module = types.ModuleType(name)
    setattr(module, hook, hookimpl(lambda registry: None))
    return module


def good_plugin():
    return plugin("good", lambda registry: registry.add("dummy", Dummy))


def test_a_misspelled_hook_suggests_the_hook_it_resembles():
    reg = load_registry([plugin_with_hook("typo", "ldm_regster"), good_plugin()], autoload=False)
    [failure] = reg.report.failed
    assert failure.origin.plugin == "typo"
    assert failure.error == "PluginValidationError: unknown hook 'ldm_regster'; did you mean 'ldm_register'?"
    assert "plugin 'typo' failed to load" in str(failure) and "did you mean 'ldm_register'" in str(failure)
    assert [o.plugin for o in reg.report.loaded] == ["good"] and reg.names("conditioner") == ["dummy"]


def test_a_hook_name_far_from_any_hook_lists_the_hooks_instead():
    reg = load_registry([plugin_with_hook("far", "make_components"), good_plugin()], autoload=False)
    [failure] = reg.report.failed
    assert failure.origin.plugin == "far"
    assert (
        failure.error
        == "PluginValidationError: unknown hook 'make_components'; a plugin may implement only 'ldm_register'"
    )
    assert "did you mean" not in failure.error
    assert reg.names("conditioner") == ["dummy"]


def test_a_plugin_with_a_real_hook_and_a_misspelled_one_keeps_none_of_its_registrations():
    module = types.ModuleType("mixed")
    module.ldm_register = hookimpl(lambda registry: registry.add("mixed", Dummy))
    module.ldm_registr = hookimpl(lambda registry: None)
    reg = load_registry([module], autoload=False)
    [failure] = reg.report.failed
    assert "unknown hook 'ldm_registr'; did you mean 'ldm_register'?" in failure.error
    assert reg.names("conditioner") == [] and reg.report.loaded == []


def test_a_class_as_plugin_is_reported_the_same_way():
    class Plugin:
        @staticmethod
        @hookimpl
        def ldm_regster(registry):
            registry.add("dummy", Dummy)

    reg = load_registry([Plugin], autoload=False)
    [failure] = reg.report.failed
    assert failure.origin.plugin == "Plugin" and "did you mean 'ldm_register'" in failure.error
