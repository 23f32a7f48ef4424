"""Method families over the table's tags and generated captions, and their fusion.

* ``tags``: ``tags-glove`` (query words matched to classifier tags through GloVe,
  ``encoders.tag_match``), when the index has a ``tags`` column (``--tag_head``).
* ``caption``: text search over each image's generated caption (``--captioner``):
  ``caption-jaccard``, ``caption-bm25``, ``caption-tfidf``, ``caption-glove`` (averaged GloVe)
  and ``caption-minilm`` (sentence embeddings, when MiniLM is installed).
* ``fused``: every other method's ranking combined: ``fused-rrf`` (reciprocal rank fusion of
  the best method of each family, no fitting) and ``fused-weighted`` (z-score fusion with the
  weights ``imgsearch train fusion`` fitted, when the models directory holds them).

Importing this module registers the families.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from encoders.text_match import CAPTION_METHODS, make_caption_scorer
from evaluation.methods import Method, MethodContext, family_methods, register_family
from index.schema import CAPTION, CAPTION_MODEL, TAG_MODEL, TAGS
from index.table import read_caption_texts, read_table_columns, table_has_columns
from models.fusion_weights import fusion_weights
from ranking.fusion import reciprocal_rank_fusion, weighted_fusion

logger = logging.getLogger(__name__)

BASE_FAMILIES = ("joint", "caption", "tags")


def _scored_method(
    name: str,
    family: str,
    description: dict,
    score: Callable[[Sequence[str]], np.ndarray],
    captions: Sequence[str],
) -> Method:
    return Method(
        name=name,
        family=family,
        description=description,
        caption_vectors=None,
        image_vectors=None,
        embed_query=None,
        caption_scores=np.asarray(score(list(captions)), dtype=np.float32),
        score_queries=score,
    )


def _image_column(context: MethodContext, column: str, model_column: str):
    """The column's values per dataset image (dataset.images order), and its model id."""
    features = context.features
    values = read_table_columns(
        features.index_dir, [column, model_column], features.table.image_ids
    )
    rows = features.image_rows
    return [values[column][r] for r in rows], (values[model_column][0] if rows.size else "")


@register_family("tags")
def tag_methods(context: MethodContext) -> list[Method]:
    """``tags-glove`` when the evaluation index has classifier tags."""
    from encoders.glove import load_glove
    from encoders.tag_match import TagMatcher
    from encoders.tags import TagHead, resolve_tag_head, tag_lists

    if not table_has_columns(context.features.index_dir, [TAGS]):
        logger.info("no tags column in the evaluation index: no tag methods")
        return []
    cells, head_version = _image_column(context, TAGS, TAG_MODEL)
    image_tags = tag_lists(cells)
    synonyms: tuple = ()
    try:  # the head's synonyms, if the one "auto" finds made these tags
        head = TagHead.load(resolve_tag_head("auto"))
        synonyms = head.synonyms if head.version == head_version else ()
    except FileNotFoundError:
        pass
    matcher = TagMatcher(load_glove(), synonyms)

    def score(texts: Sequence[str]) -> np.ndarray:
        return matcher.score(texts, image_tags)

    description = {"tag_head": head_version, "words": "glove-6b-50d", "synonyms": bool(synonyms)}
    captions = context.features.dataset.caption_texts
    return [_scored_method("tags-glove", "tags", description, score, captions)]


def _caption_scorers(
    documents: list[list[str]],
) -> dict[str, Callable[[Sequence[str]], np.ndarray]]:
    scorers = {}
    for name in CAPTION_METHODS:
        try:
            scorers[name] = make_caption_scorer(name, documents)
        except (FileNotFoundError, ImportError) as error:
            logger.warning("%s skipped: %s", name, error)
    return scorers


@register_family("caption")
def caption_methods(context: MethodContext) -> list[Method]:
    """One method per caption-matching baseline, when the index has generated captions."""
    if not table_has_columns(context.features.index_dir, [CAPTION]):
        logger.info("no caption column in the evaluation index: no caption methods")
        return []
    _, model = _image_column(context, CAPTION, CAPTION_MODEL)
    features = context.features
    # Every beam the index job kept (``captions``; the one ``caption`` of an older table).
    texts = read_caption_texts(features.index_dir, features.table.image_ids)
    documents = [texts[r] for r in features.image_rows]
    captions = features.dataset.caption_texts
    return [
        _scored_method(name, "caption", {"captioner": model}, score, captions)
        for name, score in _caption_scorers(documents).items()
    ]


def best_per_family(methods: Sequence[Method], preferred: Sequence[str] = ()) -> list[Method]:
    """One method per family: the first ``preferred`` name it has, else its first method."""
    chosen = []
    for family in dict.fromkeys(m.family for m in methods):
        members = [m for m in methods if m.family == family]
        named = [m for name in preferred for m in members if m.name == name]
        chosen.append((named or members)[0])
    return chosen


PREFERRED = ("caption-minilm", "caption-bm25", "tags-glove")


@register_family("fused")
def fused_methods(context: MethodContext) -> list[Method]:
    """RRF of the best method of each family; weighted fusion with fitted weights if any."""
    base = [m for family in BASE_FAMILIES for m in family_methods(context, family)]
    if len({m.family for m in base}) < 2:
        logger.info("fewer than two method families to fuse: no fused method")
        return []
    by_name = {m.name: m for m in base}
    rrf_parts = [m.name for m in best_per_family(base, PREFERRED)]
    methods = []

    def make(name: str, fuse: Callable[[dict[str, np.ndarray]], np.ndarray], parts, extra):
        def score(texts: Sequence[str]) -> np.ndarray:
            return fuse({n: by_name[n].query_scores(texts) for n in parts})

        fused = fuse({n: by_name[n].scores() for n in parts})
        return Method(
            name=name,
            family="fused",
            description={"parts": list(parts), **extra},
            caption_vectors=None,
            image_vectors=None,
            embed_query=None,
            caption_scores=fused,
            score_queries=score,
        )

    methods.append(make("fused-rrf", reciprocal_rank_fusion, rrf_parts, {"rule": "rrf k=60"}))
    fitted = fusion_weights(context.models_dir)
    if fitted is not None:
        weights, version = fitted
        parts = [n for n, w in weights.items() if w and n in by_name]
        missing = [n for n, w in weights.items() if w and n not in by_name]
        if missing:
            logger.warning("fusion weights name methods not evaluated here: %s", missing)
        elif parts:
            methods.append(
                make(
                    "fused-weighted",
                    lambda p, weights=weights: weighted_fusion(p, weights),
                    parts,
                    {"rule": "weighted z-scores", "weights": weights, "version": version},
                )
            )
    return methods
