"""`mergehub.__all__` is exactly the public surface."""

import types

import mergehub


def test_all_matches_exports():
    public = {name for name in dir(mergehub) if not name.startswith("_")}
    modules = {name for name in public if isinstance(getattr(mergehub, name), types.ModuleType)}
    assert set(mergehub.__all__) == public - modules
