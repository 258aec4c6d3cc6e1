"""Thin adapters over `mergehub.api`: they turn errors into exit codes, annotations or page messages.

- `cli`: the `mergehub` command (message, recipe line and hint; `--debug` for tracebacks);
- `action`: the GitHub Action (annotations at recipe lines, from the errors' and warnings' fields);
- `space`: the Gradio Space (see its package docstring);
- `signals`: SIGINT/SIGTERM as a clean stop; `secrets`: the one token scrubber.
"""
