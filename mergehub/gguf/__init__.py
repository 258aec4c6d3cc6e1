"""GGUF export: a merged (or any supported) model as llama.cpp files, written while its tensors are produced.

`types` needs nothing but mergehub; the other modules need the `gguf` package (`pip install 'mergehub[gguf]'`):
import them after `require_gguf()`.
"""
