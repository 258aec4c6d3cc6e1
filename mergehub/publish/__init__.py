"""Publishing merged models: what a merge says about itself, and its push to the Hub.

- `card_data`: the one reader of model cards (huggingface_hub's `ModelCard`, our `mergehub:` record, scores);
- `card`: a merge's card from its `Plan`: parents, licenses, recipe, checksums, lineage, then the Markdown;
- `lineage`: a model's ancestry on the Hub, from cards and recipes;
- `push`: shards uploaded as they are written, one commit, and the one place Hub errors become `PublishError`.
"""
