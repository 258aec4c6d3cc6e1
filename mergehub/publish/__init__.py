"""Publishing merged models: the push to the Hub, the model card, and lineage."""
