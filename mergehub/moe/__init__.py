"""Mixture-of-experts assembly (mergekit-moe's configs): dense fine-tunes of one base become the experts of one MoE.

`config` reads the YAML; `arch` holds the output architectures (Mixtral, Qwen2-MoE, Qwen3-MoE), their
configs and tensor names; `gates` computes the routers from the experts' prompts (`forward` runs the
base with transformers, one layer in memory at a time); `plan` turns a config into a `Plan` that the
merge executor runs like any other.
"""
