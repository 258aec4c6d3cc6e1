"""The form's gradio components, and the two maps between them and a `Form` (needs gradio)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gradio as gr

from mergehub.interfaces.space.form import Form, SharedValue, format_value, model_specs, shared_specs
from mergehub.methods import MethodSpec, ParamSpec, all_methods, get_method

_DTYPES = ("", "bfloat16", "float16", "float32", "float64")
_DTYPE_CHOICES = [("as stored", ""), *((d, d) for d in _DTYPES[1:])]


def _method_choices() -> list[tuple[str, str]]:
    """The method dropdown's entries: `name — summary`, by name."""
    return [(f"{name} — {spec.summary}", name) for name, spec in sorted(all_methods().items())]


def _method_markdown(spec: MethodSpec) -> str:
    """The line under the method dropdown: summary, paper, inputs and base model."""
    base = {
        "required": "a base model is required",
        "optional": "a base model is optional",
        "ignored": "no base model is used",
    }[spec.base]
    inputs = f"{spec.min_inputs}" + (
        "+" if spec.max_inputs is None else "" if spec.max_inputs == spec.min_inputs else f"-{spec.max_inputs}"
    )
    paper = f" · [paper]({spec.paper})" if spec.paper else ""
    stacks = " Layer ranges stack slices of layers into a deeper model." if spec.stacks_layers else ""
    return f"**{spec.name}**: {spec.summary}{paper}  \nMerges {inputs} model(s) per tensor; {base}.{stacks}"


def _param_label(p: ParamSpec) -> str:
    """A parameter field's label: name, kind and default."""
    kind = "true/false" if p.type is bool else "number" if p.type in (int, float) else p.type.__name__
    default = "required" if p.required else f"default {format_value(p.default) if p.default is not None else 'none'}"
    return f"{p.name} ({kind}; {default})"


def _base_label(spec: MethodSpec) -> str:
    """The base model field's label: whether the method needs one."""
    return {
        "required": "Base model (required)",
        "optional": "Base model (optional)",
        "ignored": "Base model (not used by this method; optional)",
    }[spec.base]


def _placeholder(p: ParamSpec | None) -> str:
    """A parameter field's placeholder: its default, when it has one."""
    return "" if p is None or p.required or p.default is None else format_value(p.default)


class FormView:
    """The form's components (created in the current gradio layout), and the two maps between them and a `Form`."""

    def __init__(self, model_slots: int) -> None:
        methods = all_methods().values()
        model_fields = max(len(model_specs(s)) for s in methods)
        shared_fields = max(len(shared_specs(s)) for s in methods)
        self.model_slots, self.model_fields, self.shared_fields = model_slots, model_fields, shared_fields
        self.method = gr.Dropdown(_method_choices(), value="slerp", label="Merge method", filterable=True)
        self.method_info = gr.Markdown()
        self.base = gr.Dropdown(
            [],
            value="",
            label="Base model",
            allow_custom_value=True,
            filterable=True,
            info="Type to search the Hub, or paste `org/name`.",
        )
        self.count = gr.Slider(1, model_slots, step=1, value=1, label="Models (besides the base)")
        self.rows, self.models, self.params = [], [], []
        for i in range(model_slots):
            with gr.Row(visible=i == 0) as row:
                self.rows.append(row)
                self.models.append(
                    gr.Dropdown([], value="", label=f"Model {i + 1}", allow_custom_value=True, filterable=True, scale=3)
                )
                self.params.append(
                    [
                        gr.Textbox(label=f"param {k + 1}", visible=False, scale=1, min_width=120)
                        for k in range(model_fields)
                    ]
                )
        gr.Markdown(
            "**Parameters for all models**: a number, `true`/`false`, or comma-separated numbers for a gradient "
            "over the layers (e.g. `0, 0.5, 1`). The `self_attn` and `mlp` fields override the value for those tensors."
        )
        self.shared_rows, self.shared = [], []
        for _ in range(shared_fields):
            with gr.Row(visible=False) as row:
                self.shared_rows.append(row)
                self.shared.append([gr.Textbox(label=label, min_width=120) for label in ("value", "self_attn", "mlp")])
        self.ranges = gr.Textbox(
            label="Layer ranges: one slice per line, `org/model START-END` (stacked in order)",
            lines=4,
            visible=False,
            placeholder="org/model 0-16\norg/model 8-24",
        )
        self.dtype = gr.Dropdown(
            _DTYPE_CHOICES, value="", label="dtype (inputs rounded to it; output dtype unless out_dtype is set)"
        )

    @property
    def boxes(self) -> list:
        """Every parameter box: per model, then shared."""
        return [box for boxes in self.params for box in boxes] + [box for boxes in self.shared for box in boxes]

    @property
    def fields(self) -> list:
        """Every component a visitor types a recipe value into (all but the method and the model count)."""
        return [self.base, self.ranges, self.dtype, *self.models, *self.boxes]

    @property
    def inputs(self) -> set:
        """Every component whose value the form reads."""
        return {self.method, self.count, *self.fields}

    @property
    def outputs(self) -> list:
        """Every component `render` updates."""
        flat = [
            self.method,
            self.method_info,
            self.base,
            self.count,
            self.ranges,
            self.dtype,
            *self.rows,
            *self.models,
            *self.shared_rows,
        ]
        return flat + self.boxes

    def collect(self, data: Mapping[Any, Any], base_position: int | None = None) -> Form:
        """The form the components show (`data` maps components to values)."""
        spec = get_method(data[self.method] or "slerp")
        per_model, for_all = model_specs(spec), shared_specs(spec)
        count = int(data[self.count] or 1)
        models, params = [], []
        for i in range(count):
            models.append((data[self.models[i]] or "").strip())
            params.append(
                {p.name: str(data[self.params[i][k]] or "") for k, p in enumerate(per_model[: self.model_fields])}
            )
        shared = {
            p.name: SharedValue(*(str(data[box] or "") for box in self.shared[j]))
            for j, p in enumerate(for_all[: self.shared_fields])
        }
        return Form(
            spec.name,
            (data[self.base] or "").strip(),
            models,
            params,
            shared,
            data[self.ranges] or "",
            data[self.dtype] or "",
            base_position,
        )

    def render(self, form: Form) -> dict:
        """Updates that make the components show `form`, with labels and visibility from the method's parameters."""
        spec = get_method(form.method)
        per_model, for_all = model_specs(spec), shared_specs(spec)
        count = max(1, min(len(form.models), self.model_slots))
        updates: dict = {
            self.method: gr.update(value=spec.name),
            self.method_info: gr.update(value=_method_markdown(spec)),
            self.base: gr.update(value=form.base, label=_base_label(spec)),
            self.count: gr.update(value=count),
            self.ranges: gr.update(value=form.layer_ranges, visible=spec.stacks_layers),
            self.dtype: gr.update(value=form.dtype if form.dtype in _DTYPES else ""),
        }
        for i in range(self.model_slots):
            updates[self.rows[i]] = gr.update(visible=i < count)
            updates[self.models[i]] = gr.update(value=form.models[i] if i < len(form.models) else "")
            texts = form.params_of(i)
            for k in range(self.model_fields):
                p = per_model[k] if k < len(per_model) else None
                updates[self.params[i][k]] = gr.update(
                    value=texts.get(p.name, "") if p else "",
                    label=_param_label(p) if p else "",
                    placeholder=_placeholder(p),
                    visible=p is not None,
                )
        for j in range(self.shared_fields):
            p = for_all[j] if j < len(for_all) else None
            value = form.shared.get(p.name, SharedValue()) if p else SharedValue()
            updates[self.shared_rows[j]] = gr.update(visible=p is not None)
            default_box, attn_box, mlp_box = self.shared[j]
            updates[default_box] = gr.update(
                value=value.default,
                label=_param_label(p) if p else "",
                placeholder=_placeholder(p),
            )
            filters = p is not None and p.type is not bool
            updates[attn_box] = gr.update(
                value=value.self_attn, label=f"{p.name} for self_attn" if p else "", visible=filters
            )
            updates[mlp_box] = gr.update(value=value.mlp, label=f"{p.name} for mlp" if p else "", visible=filters)
        return updates
