"""Fine-tuning of multi-exit QA models (needs torch and transformers: ``pip install elma[train]``)."""
