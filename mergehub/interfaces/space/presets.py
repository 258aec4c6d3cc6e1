"""The preset recipes offered as buttons, and the default name of the output repo."""

from __future__ import annotations

from collections.abc import Sequence

from mergehub.errors import RecipeError
from mergehub.interfaces.space.form import Form, SharedValue
from mergehub.recipe import repo_name

EXAMPLE_MODELS = ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct")
"""The two models (24 layers each) of the page's first recipe; presets never add models."""
EXAMPLE_LAYERS = 24
"""The layer count of the example models."""
PRESETS = ("SLERP of two models", "TIES of three models", "DARE-TIES", "Passthrough frankenmerge")
"""The presets' names, as their buttons show them."""
PRESET_MODELS = {"SLERP of two models": 2, "TIES of three models": 4, "DARE-TIES": 3, "Passthrough frankenmerge": 1}
"""How many models (the base included) each preset merges."""


def _pick_models(models: Sequence[str], count: int) -> list[str]:
    """The first `count` distinct models given, then empty slots for the ones still to choose."""
    picked = list(dict.fromkeys(m.strip() for m in models if m and m.strip()))[:count]
    return picked + [""] * (count - len(picked))


def missing_models(name: str, models: Sequence[str]) -> str:
    """What the page asks for after a preset: the models still to choose, or "" when there are enough."""
    chosen = len(dict.fromkeys(m.strip() for m in models if m and m.strip()))
    missing = PRESET_MODELS.get(name, 0) - chosen
    if missing <= 0:
        return ""
    if name == "Passthrough frankenmerge":
        return "Choose the models to stack: write `org/model START-END` lines in Layer ranges."
    return f"Choose {missing} more model{'s' if missing > 1 else ''} for this preset (the empty model fields)."


def preset_form(name: str, models: Sequence[str] = (), layers: int = EXAMPLE_LAYERS) -> Form:
    """A preset recipe as a form, on the given models (base first); slots without a model stay empty.

    Raises:
        RecipeError: `name` is not one of `PRESETS`.
    """
    if name == "SLERP of two models":
        base, other = _pick_models(models, 2)
        return Form(
            method="slerp",
            base=base,
            models=[other],
            model_params=[{}],
            shared={"t": SharedValue("0.5", "0, 0.5, 0.3, 0.7, 1", "1, 0.5, 0.7, 0.3, 0")},
            dtype="bfloat16",
        )
    if name == "TIES of three models":
        base, *others = _pick_models(models, 4)
        weights = ("0.5", "0.3", "0.2")
        return Form(
            method="ties",
            base=base,
            models=others,
            model_params=[{"weight": w, "density": "0.5"} for w in weights[: len(others)]],
            shared={"normalize": SharedValue("true")},
            dtype="bfloat16",
        )
    if name == "DARE-TIES":
        base, *others = _pick_models(models, 3)
        return Form(
            method="dare_ties",
            base=base,
            models=others,
            model_params=[{"weight": "0.5", "density": "0.53"} for _ in others],
            dtype="bfloat16",
        )
    if name == "Passthrough frankenmerge":
        given = [m.strip() for m in models if m and m.strip()]
        if not given:
            return Form(method="passthrough", layer_ranges="", dtype="bfloat16")
        first, second = given * 2 if len(given) == 1 else given[:2]
        layers = max(int(layers), 3)
        cut_low, cut_high = layers // 3, layers - layers // 3
        return Form(
            method="passthrough",
            layer_ranges=f"{first} 0-{cut_high}\n{second} {cut_low}-{layers}",
            dtype="bfloat16",
        )
    raise RecipeError(f"Unknown preset {name!r}.", hint=f"Use one of: {', '.join(PRESETS)}.")


def default_repo_name(method: str, models: Sequence[str]) -> str:
    """A repo name from the method and the models' names, e.g. `Qwen2.5-0.5B-Qwen2.5-0.5B-Instruct-slerp`."""
    names = list(dict.fromkeys(m.split("@")[0].rstrip("/").rsplit("/", 1)[-1] for m in models if m and m.strip()))
    suffix = method.replace("_", "-")
    stem = "-".join(names) or "merged"
    if len(stem) + len(suffix) + 1 > 96:
        stem = f"{names[0][:60]}-and-{len(names) - 1}-more" if names else "merged"
    return repo_name(f"{stem}-{suffix}") or "merged"
