"""Try it: talk to a merged model (or any Hub model) on the page, its reply streamed token by token.

The model is loaded with transformers from the Hub at a size the machine can run: on the Space's GPU
when there is one (through ZeroGPU's `@spaces.GPU`, with a duration from the model's size), else on
the CPU up to `MAX_CPU_BYTES`. The prompt goes through the tokenizer's chat template when it has one.
`compare` sends the same prompt to each parent the model's card names. No gradio here.
"""

from __future__ import annotations

import inspect
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from mergehub.errors import MergehubError, SourceError
from mergehub.interfaces.space.safety import check_hub_reference, scrub, user_message
from mergehub.units import format_size

__all__ = ["MAX_CPU_BYTES", "MAX_GPU_BYTES", "MAX_NEW_TOKENS", "weights_size", "parents_of", "reply_stream"]

MAX_CPU_BYTES = 2_000_000_000
"""The largest model (bytes of weights) the page talks to on a CPU: about a 1B model in bfloat16."""
MAX_GPU_BYTES = 30_000_000_000
"""The largest model the page talks to on a GPU."""
MAX_NEW_TOKENS = 512
"""The most tokens one reply may generate."""
_LOADED: OrderedDict[tuple[str, str], tuple[Any, Any]] = OrderedDict()
_KEEP = 2  # models kept loaded: the merge and one parent
_LOCK = threading.Lock()


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def weights_size(model_id: str, token: str | bool) -> int:
    """The bytes of a Hub model's weight files (safetensors, else PyTorch bins).

    Raises:
        SourceError: the Hub does not know the model, or the token may not read it.
    """
    from huggingface_hub import HfApi

    repo, _, revision = model_id.partition("@")
    try:
        info = HfApi(token=token).model_info(repo, revision=revision or None, files_metadata=True)
    except Exception as e:  # noqa: BLE001 - one message for the page
        raise SourceError(
            f"Cannot read {model_id} on the Hub: {scrub(str(e).splitlines()[0] if str(e) else type(e).__name__)}.",
            hint="Check the model ID; for a private or gated model, sign in with an account that may read it.",
            remedy="sign-in",
        ) from e
    files = info.siblings or []
    for suffix in (".safetensors", ".bin"):
        sizes = [f.size or 0 for f in files if f.rfilename.endswith(suffix)]
        if sizes:
            return sum(sizes)
    raise SourceError(f"{model_id} has no weight files (.safetensors or .bin).", hint="Choose a model repo.")


def check_size(model_id: str, nbytes: int, device: str) -> None:
    """Refuse a model too large to talk to here.

    Raises:
        MergehubError: it is over the cap for `device`.
    """
    cap = MAX_GPU_BYTES if device == "cuda" else MAX_CPU_BYTES
    if nbytes > cap:
        where = "this Space's GPU" if device == "cuda" else "this Space's CPU (it has no GPU)"
        raise MergehubError(
            f"{model_id} has {format_size(nbytes)} of weights; the chat runs models up to {format_size(cap)} "
            f"on {where}.",
            hint="Try a smaller model, or run it on your own machine with transformers.",
        )


def parents_of(model_id: str, token: str | bool) -> list[str]:
    """The models a merge's card names as its `base_model` (its parents), or none."""
    from huggingface_hub import HfApi

    try:
        data = HfApi(token=token).model_info(model_id.partition("@")[0]).card_data
    except Exception:  # noqa: BLE001 - no card, no parents to compare with
        return []
    parents = (data.to_dict() if data is not None else {}).get("base_model") or []
    return [parents] if isinstance(parents, str) else [str(p) for p in parents]


def _load(model_id: str, token: str | bool, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = (model_id, device)
    with _LOCK:
        if key in _LOADED:
            _LOADED.move_to_end(key)
            return _LOADED[key]
    repo, _, revision = model_id.partition("@")
    tokenizer = AutoTokenizer.from_pretrained(repo, revision=revision or None, token=token)
    model = AutoModelForCausalLM.from_pretrained(
        repo, revision=revision or None, token=token, dtype="auto" if device == "cuda" else "float32"
    ).to(device)
    model.eval()
    with _LOCK:
        _LOADED[key] = (tokenizer, model)
        while len(_LOADED) > _KEEP:
            _LOADED.popitem(last=False)
    return tokenizer, model


def _content(value: Any) -> str:
    """A chat message's text (gradio may give a message's content as a list of typed parts)."""
    if isinstance(value, list):
        return "".join(str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in value)
    return str(value if value is not None else "")


def _prompt_ids(tokenizer: Any, history: Sequence[dict[str, Any]], message: str) -> Any:
    """The prompt's token IDs: the chat template over the conversation, or the turns as plain text."""
    messages = [{"role": m["role"], "content": _content(m.get("content"))} for m in history] + [
        {"role": "user", "content": message}
    ]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        return ids if not hasattr(ids, "input_ids") else ids["input_ids"]
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"
    return tokenizer(text, return_tensors="pt").input_ids


def _generate(
    model_id: str, history: list[dict[str, str]], message: str, max_new_tokens: int, temperature: float, token: Any
) -> Iterator[str]:
    """The reply so far, each time a token arrives (runs where the model is: the GPU worker on ZeroGPU)."""
    from transformers import TextIteratorStreamer

    device = _device()
    try:
        tokenizer, model = _load(model_id, token, device)
    except (OSError, ValueError, KeyError) as e:  # transformers' words for a repo it cannot load
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SourceError(
            f"transformers cannot load {model_id}: {scrub(first, [token])}",
            hint="The chat needs a causal language model with its tokenizer in the repo.",
        ) from e
    ids = _prompt_ids(tokenizer, history, message).to(device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
    sample = temperature > 0
    options = dict(
        input_ids=ids,
        attention_mask=ids.new_ones(ids.shape),
        max_new_tokens=int(max_new_tokens),
        do_sample=sample,
        streamer=streamer,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    if sample:
        options["temperature"] = float(temperature)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            model.generate(**options)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=work, name="mergehub-space-chat", daemon=True)
    thread.start()
    reply = ""
    for piece in streamer:
        reply += piece
        yield reply
    thread.join()
    if errors:
        raise errors[0]


def gpu_seconds(nbytes: int, max_new_tokens: int) -> int:
    """GPU seconds to ask ZeroGPU for one reply: loading `nbytes` of weights, then generating the tokens."""
    return int(min(300, 20 + nbytes / 1e9 * 5 + max_new_tokens / 20))


def generator() -> Callable[..., Iterator[str]]:
    """`_generate`, wrapped for ZeroGPU (with a duration from the model's size) when the `spaces` package is
    there."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return _generate

    def duration(*args: Any, **kwargs: Any) -> int:  # called with `_generate`'s arguments
        asked = inspect.signature(_generate).bind(*args, **kwargs).arguments
        try:
            nbytes = weights_size(asked["model_id"], asked["token"])
        except MergehubError:
            nbytes = 0
        return gpu_seconds(nbytes, asked["max_new_tokens"])

    return spaces.GPU(duration=duration)(_generate)


def reply_stream(
    model_id: str,
    history: Sequence[dict[str, str]],
    message: str,
    *,
    token: str | bool = False,
    max_new_tokens: int = 128,
    temperature: float = 0.7,
    generate: Callable[..., Iterator[str]] = _generate,
) -> Iterator[str]:
    """The chat's reply to `message` after `history` (role/content dicts), growing as tokens stream in; an error
    is one line starting with ❌ (the model is too large, unknown, or failed), as plain text."""
    try:
        model_id = check_hub_reference((model_id or "").strip())
        if not (message or "").strip():
            raise MergehubError("Write a message first.", hint="Type a prompt, then press Send.")
        check_size(model_id, weights_size(model_id, token), _device())
        new = max(1, min(int(max_new_tokens), MAX_NEW_TOKENS))
        yield from generate(model_id, list(history), message, new, max(0.0, float(temperature)), token)
    except Exception as e:  # noqa: BLE001 - shown to the visitor, scrubbed
        yield "❌ " + user_message(e, [token])
