"""A plugin whose import fails, as one with a missing native dependency would."""

raise ImportError("ldm-plugin-broken needs the 'libfoo' library, which is not installed")
