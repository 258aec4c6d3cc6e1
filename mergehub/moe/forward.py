"""The base model's hidden states over prompts, with transformers, holding one decoder layer's weights at a time.

The model is built from its config with every parameter on the `meta` device (no memory); the
embedding and final norm are read from the source, then each decoder layer is read when the first
batch reaches it and dropped when the last batch leaves it. Each batch of prompts runs transformers'
own forward in its own thread; the threads meet at every layer (a barrier), so the base is read once
however many batches there are, and memory holds the embedding, one layer and the activations.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch

from mergehub.errors import GateError
from mergehub.sources.base import TensorSource

__all__ = ["LayerStates", "hidden_states"]

LayerStates = torch.Tensor
"""A batch's hidden states entering each decoder layer: (layers, batch, tokens, hidden)."""


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Build modules with their parameters on the `meta` device (buffers such as rotary frequencies stay real)."""
    original = torch.nn.Module.register_parameter

    def register(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=False)

    torch.nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original  # type: ignore[method-assign]


def _build(config_dir: Path) -> torch.nn.Module:
    """The decoder (without its LM head) of the model whose config.json is in `config_dir`, parameters on meta."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(config_dir)
        with _parameters_on_meta():
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, OSError) as e:
        raise GateError(
            f"transformers cannot build the base model from its config.json: {e}",
            hint="`gate_mode: hidden` runs the base with transformers: use a base it knows, or cheap_embed.",
        ) from e
    return model.base_model.eval()


def _layers(decoder: torch.nn.Module, count: int) -> torch.nn.ModuleList:
    """The decoder's list of `count` layers."""
    for module in decoder.children():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise GateError(
        f"transformers' {type(decoder).__name__} has no list of {count} decoder layers.",
        hint="`gate_mode: hidden` supports decoder-only models (Llama, Mistral, Qwen); try `gate_mode: cheap_embed`.",
    )


class _Weights:
    """Loads and drops a module's parameters from the source, by their names in the checkpoint."""

    def __init__(
        self, decoder: torch.nn.Module, source: TensorSource, prefix: str, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.source, self.prefix, self.dtype, self.device = source, prefix, dtype, device
        self.names = {module: name for name, module in decoder.named_modules()}

    def load(self, module: torch.nn.Module) -> None:
        """Read the module's parameters (all of its submodules') from the source, onto the device."""
        names = {f"{self.prefix}{self._name(module, local)}": local for local, _ in module.named_parameters()}
        missing = [name for name in names if name not in self.source.tensors()]
        if missing:
            raise GateError(
                f"{self.source.label} has no tensor {missing[0]}, which transformers' model of its architecture needs"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + ".",
                hint="The checkpoint names differ from transformers'; use `gate_mode: cheap_embed` or random gates.",
            )
        tensors = self.source.read_many(names)
        for name, local in names.items():
            self._set(module, local, tensors[name].to(self.device, self.dtype))

    def drop(self, module: torch.nn.Module) -> None:
        """Put the module's parameters back on the meta device, freeing their memory."""
        for local, param in list(module.named_parameters()):
            self._set(module, local, param.detach().to("meta"))

    def _name(self, module: torch.nn.Module, local: str) -> str:
        return f"{self.names[module]}.{local}" if self.names[module] else local

    @staticmethod
    def _set(module: torch.nn.Module, local: str, tensor: torch.Tensor) -> None:
        owner_name, _, attr = local.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        owner._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)


def _run_batches(
    decoder: torch.nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]
) -> list[tuple[torch.Tensor, ...]]:
    """Each batch's `hidden_states` output, the batches' forwards run in threads that meet at every layer."""
    results: list[tuple[torch.Tensor, ...] | None] = [None] * len(batches)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            with torch.no_grad():
                output = decoder(**batches[index], output_hidden_states=True, return_dict=True, use_cache=False)
            results[index] = tuple(output.hidden_states)
        except threading.BrokenBarrierError:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            errors.append(e)
            _abort_all(decoder)

    threads = [
        threading.Thread(target=run, args=(i,), name=f"mergehub-prompts-{i}", daemon=True) for i in range(len(batches))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


_BARRIERS = "_mergehub_barriers"


def _abort_all(decoder: torch.nn.Module) -> None:
    for barrier in getattr(decoder, _BARRIERS, ()):
        barrier.abort()


def _meet_at_layers(
    decoder: torch.nn.Module, layers: torch.nn.ModuleList, parties: int, weights: _Weights
) -> Callable[[], None]:
    """Hooks making each batch's thread wait at each layer: the first loads it, the last drops it; returns a remover."""
    handles, barriers = [], []

    def waiter(barrier: threading.Barrier) -> Callable[..., None]:
        def wait(*_: object) -> None:
            barrier.wait()

        return wait

    for layer in layers:
        enter = threading.Barrier(parties, action=lambda layer=layer: weights.load(layer))
        leave = threading.Barrier(parties, action=lambda layer=layer: weights.drop(layer))
        barriers += [enter, leave]
        handles.append(layer.register_forward_pre_hook(waiter(enter)))
        handles.append(layer.register_forward_hook(waiter(leave)))
    setattr(decoder, _BARRIERS, barriers)

    def remove() -> None:
        for handle in handles:
            handle.remove()
        delattr(decoder, _BARRIERS)

    return remove


def hidden_states(
    source: TensorSource,
    config_dir: Path,
    batches: Sequence[Mapping[str, torch.Tensor]],
    *,
    num_layers: int,
    dtype: torch.dtype,
    device: torch.device,
) -> list[LayerStates]:
    """For each batch (`input_ids`, `attention_mask`), the hidden states entering each of the base's decoder layers.

    The base runs in `dtype` on `device`; its weights come from `source` (checkpoint names as transformers
    names its parameters, e.g. `model.layers.0.mlp.up_proj.weight`).

    Raises:
        GateError: transformers does not know the architecture, or the checkpoint lacks a tensor it needs.
    """
    if not batches:
        return []
    decoder = _build(config_dir)
    layers = _layers(decoder, num_layers)
    weights = _Weights(decoder, source, _checkpoint_prefix(source, decoder), dtype, device)
    outside = [m for m in decoder.children() if m is not layers]
    for module in outside:
        weights.load(module)
    for name, buffer in list(decoder.named_buffers()):
        owner_name, _, attr = name.rpartition(".")
        owner = decoder.get_submodule(owner_name) if owner_name else decoder
        owner._buffers[attr] = buffer.to(device)
    remove = _meet_at_layers(decoder, layers, len(batches), weights)
    try:
        outputs = _run_batches(decoder, [{k: v.to(device) for k, v in batch.items()} for batch in batches])
    finally:
        remove()
        for module in outside:
            weights.drop(module)
    return [torch.stack(states[:num_layers]).cpu() for states in outputs]


def _checkpoint_prefix(source: TensorSource, decoder: torch.nn.Module) -> str:
    """How the checkpoint prefixes the decoder's parameter names: `model.` for a causal LM's, or nothing."""
    names = [name for name, _ in decoder.named_parameters()]
    for prefix in ("model.", ""):
        if all(f"{prefix}{name}" in source.tensors() for name in names[:3]):
            return prefix
    raise GateError(
        f"{source.label} has no tensor named like transformers' {names[0]} (nor model.{names[0]}).",
        hint="`gate_mode: hidden` needs a checkpoint with transformers' names; try `gate_mode: cheap_embed`.",
    )
