"""The model as files: where its files are (:mod:`.source`: paths and Hugging Face ids),
what its ``config.json`` says (:mod:`.config`), and which of its layers are embeddings and
heads (:mod:`.layouts`)."""
