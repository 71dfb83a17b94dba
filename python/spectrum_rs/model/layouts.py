"""Which layers of a model are its input embeddings and its output head, judged from layer
names alone, and which layer a tied head repeats (docs/method.md §1). The one home of
these rules: the scan, the result files and the training integrations all ask here."""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

#: A layer is an embedding or head when its last name part contains one of these
#: (``embed_tokens``, ``word_embeddings``, ``wte``, ``wpe``, ...) or it is ``lm_head``.
EMBEDDING_MARKERS = ("embed", "wte", "wpe", "lm_head")
#: The input token embedding a tied head shares its weight with, most common first.
INPUT_EMBEDDING_SUFFIXES = ("embed_tokens", "word_embeddings", "wte", "embed_in", "tok_embeddings")
HEAD = "lm_head"


def is_embedding(name: str) -> bool:
    """Whether the layer ``name`` is an input embedding or the output head."""
    last = name.split(".")[-1]
    return name == HEAD or any(m in last for m in EMBEDDING_MARKERS)


def embedding_names(names: Iterable[str]) -> List[str]:
    """The embedding and head layers among ``names``, in the order given."""
    return [name for name in names if is_embedding(name)]


def input_embedding(names: Sequence[str]) -> Optional[str]:
    """The input token embedding among ``names`` (what a tied head repeats), or None."""
    for suffix in INPUT_EMBEDDING_SUFFIXES:
        for name in names:
            if name.split(".")[-1] == suffix:
                return name
    return None
