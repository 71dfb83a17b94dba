"""Which layers of a model are its input embeddings and its output head, judged from layer
names alone, and which layer a tied head repeats (docs/method.md §1). The one home of
these rules: the scan, the result files and the training integrations all ask here."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence

from .. import _core
from .config import ties_embeddings

#: A layer is an embedding or head when its last name part contains one of these
#: (``embed_tokens``, ``word_embeddings``, ``wte``, ``wpe``, ...), is one of
#: :data:`EMBEDDING_PARTS`, or it is ``lm_head``.
EMBEDDING_MARKERS = ("embed", "wte", "wpe", "lm_head")
#: Last name parts that are the token embedding under a name without a marker: ``shared``,
#: the one T5, BART, mBART, Pegasus and Marian share between encoder, decoder and head
#: (their files hold ``shared.weight`` / ``model.shared.weight`` alone).
EMBEDDING_PARTS = ("shared",)
#: The input token embedding a tied head shares its weight with, most common first.
INPUT_EMBEDDING_SUFFIXES = ("embed_tokens", "word_embeddings", "wte", "embed_in", "tok_embeddings", "shared")
HEAD = "lm_head"


def is_embedding(name: str) -> bool:
    """Whether the layer ``name`` is an input embedding or the output head."""
    last = name.split(".")[-1]
    return name == HEAD or last in EMBEDDING_PARTS or any(m in last for m in EMBEDDING_MARKERS)


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


def tied_head_source(
    config: Dict[str, Any], names: Sequence[str], types: Sequence[str] = (), exclude: Sequence[str] = ()
) -> Optional[int]:
    """With tied embeddings (``config.json``) the file holds no ``lm_head.weight``; the
    reference still lists ``lm_head`` with the embedding's SNR (docs/method.md §1.6).
    Returns the index in ``names`` of the embedding layer to report it from, or None when
    there is no tied head to report (no tie, a real head, no embedding, or ``lm_head`` not
    selected by ``types`` / ``exclude``)."""
    if not ties_embeddings(config) or HEAD in names:
        return None
    source = input_embedding(names)
    if source is None:
        return None
    if types and not any(_core.layer_matches(p, HEAD, HEAD) for p in types):
        return None
    if any(_core.layer_matches(p, HEAD, HEAD) for p in exclude):
        return None
    return list(names).index(source)
