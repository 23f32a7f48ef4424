"""Text->image methods that ``imgsearch eval`` compares, found by name in a small registry.

A *family* (e.g. ``"joint"``) is a function ``MethodContext -> list[Method]``: it looks at what
is available (the models directory, the indexed features) and returns one prepared ``Method``
per representation it can offer, e.g. one per joint model. Later families (caption matching,
image tags, fused ranking) plug in with ``@register_family("tags")`` and show up in the same
tables, evaluated on the same queries and images.

A ``Method`` is scored by dot product (``caption_vectors @ image_vectors.T``), or, for
methods whose scores are not one (BM25, Jaccard, tag matching, fused rankings), by its scores
hook: ``caption_scores`` (every dataset caption x every image, computed once) and
``score_queries(texts) -> (Q, images)`` for single serving-style queries. ``scores()`` gives
the ``(captions, images)`` matrix either way, which is what fusion combines. A joint model
with a query bank (``encoders.query_bank``) gives its method ``image_bias`` and
``caption_bias``: its text->image scores are the dot products minus each image's bias, its
image->text scores minus each caption's, as the server ranks them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from encoders.base import l2_normalize
from encoders.joint import JOINT_KINDS, KIND_W2VV
from models.artifacts import list_models
from models.query_model import load_query_model
from serving.searcher import ImageSearcher
from training.features import DatasetFeatures
from training.train_joint_job import encode_texts

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MethodContext:
    """What a family may use: the models directory and the indexed evaluation images.

    ``prepared`` caches each family's methods, so a family that builds on others (fusion)
    reuses them instead of preparing them twice.
    """

    models_dir: Path | None
    features: DatasetFeatures  # dataset + table + dataset-image -> table-row map
    images: ImageSearcher  # the ScaNN index over the same table (OUT/index)
    prepared: dict[str, list[Method]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(eq=False)
class Method:
    """One text->image representation, prepared on the evaluation set.

    ``caption_vectors`` follow ``dataset.captions``, ``image_vectors`` ``dataset.images``.
    ``index_vectors`` are what the method's ANN index holds (table-row order) and
    ``ann_search(queries, k) -> (Q, k) table rows`` searches it, or both are None when the
    method has no ANN index (serving scores it exactly). ``embed_query`` is the single-query
    serving path (text -> vector), timed for the latency figures.
    """

    name: str
    family: str
    description: dict[str, Any]
    caption_vectors: np.ndarray | None
    image_vectors: np.ndarray | None
    embed_query: Callable[[str], np.ndarray] | None
    ann_name: str | None = None
    index_vectors: np.ndarray | None = None
    ann_search: Callable[[np.ndarray, int], np.ndarray] | None = None
    # The scores hook (instead of vectors): (captions, images) and texts -> (Q, images).
    caption_scores: np.ndarray | None = None
    score_queries: Callable[[Sequence[str]], np.ndarray] | None = None
    # Hubness correction (vector methods of a model with a query bank): per dataset image,
    # subtracted from text->image scores; per dataset caption, from image->text scores.
    image_bias: np.ndarray | None = None
    caption_bias: np.ndarray | None = None
    # The same correction per row of ``index_vectors`` (table-row order), for the ANN figures.
    index_bias: np.ndarray | None = None

    def __post_init__(self) -> None:
        vectors = self.caption_vectors is not None and self.image_vectors is not None
        hook = self.caption_scores is not None and self.score_queries is not None
        if vectors == hook:
            raise ValueError(
                f"method {self.name}: give caption_vectors + image_vectors + embed_query, or "
                f"caption_scores + score_queries (exactly one of the two)"
            )

    @property
    def scored_by_hook(self) -> bool:
        return self.caption_scores is not None

    @property
    def corrected(self) -> bool:
        """Whether the scores subtract a query bank's bias (not plain dot products)."""
        return self.image_bias is not None

    def scores(self) -> np.ndarray:
        """``(captions, images)`` text->image scores, higher is better."""
        if self.caption_scores is not None:
            return self.caption_scores
        return self._minus_image_bias(self.caption_vectors @ self.image_vectors.T)

    def image_to_text_scores(self) -> np.ndarray:
        """``(images, captions)`` scores of each image's captions (vector methods only)."""
        scores = self.image_vectors @ self.caption_vectors.T
        return scores if self.caption_bias is None else scores - self.caption_bias[None]

    def query_scores(self, texts: Sequence[str]) -> np.ndarray:
        """``(Q, images)`` scores of new query texts."""
        if self.score_queries is not None:
            return self.score_queries(texts)
        vectors = np.stack([self.embed_query(t) for t in texts])
        return self._minus_image_bias(vectors @ self.image_vectors.T)

    def _minus_image_bias(self, scores: np.ndarray) -> np.ndarray:
        return scores if self.image_bias is None else scores - self.image_bias[None]


Family = Callable[[MethodContext], list[Method]]
_FAMILIES: dict[str, Family] = {}


def register_family(name: str) -> Callable[[Family], Family]:
    """Decorator: make a family available to ``prepare_methods`` under ``name``."""

    def register(family: Family) -> Family:
        if name in _FAMILIES:
            raise ValueError(f"method family {name!r} is already registered")
        _FAMILIES[name] = family
        return family

    return register


def family_names() -> list[str]:
    """Registered families; "joint" first (the primary method), "fused" last (it builds on the
    others), the rest by name."""
    order = {"joint": 0, "fused": 2}
    return sorted(_FAMILIES, key=lambda name: (order.get(name, 1), name))


def family_methods(context: MethodContext, family: str) -> list[Method]:
    """The methods of one family, prepared once per context (a context without the cache,
    e.g. a test's stand-in, prepares them every time)."""
    if getattr(context, "prepared", None) is None:
        return _FAMILIES[family](context)
    if family not in context.prepared:
        context.prepared[family] = _FAMILIES[family](context)
    return context.prepared[family]


def prepare_methods(context: MethodContext, families: list[str] | None = None) -> list[Method]:
    """Every method of the named families (default: all), in family then method order."""
    chosen = families or family_names()
    unknown = sorted(set(chosen) - set(_FAMILIES))
    if unknown:
        raise ValueError(f"unknown method families {unknown}; known: {family_names()}")
    methods: list[Method] = []
    for family in chosen:
        methods.extend(family_methods(context, family))
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"two methods share a name: {names}")
    return methods


def joint_model_names(models_dir: str | Path | None) -> list[str]:
    """Joint models (``w2vv-*``, ``dual-*``) with a published version, dual encoders first."""
    if models_dir is None:
        return []
    names = {m.name for m in list_models(models_dir) if m.kind in JOINT_KINDS and m.latest}
    return sorted(names, key=lambda name: (not name.startswith("dual-"), name))


@register_family("joint")
def joint_methods(context: MethodContext) -> list[Method]:
    """One method per joint model in the models directory (its latest version).

    Word2VisualVec queries search the image index (its space is the image space); a dual
    encoder searches the index's joint shard when that shard was made by the same version,
    else it has no ANN index here (serving would score it exactly).
    """
    features = context.features
    table = features.table
    methods = []
    for name in joint_model_names(context.models_dir):
        query = load_query_model(  # pinned: LATEST may move meanwhile
            context.models_dir,
            name,
            image_encoder_id=table.encoder_id,
            images="the evaluation index",
        )
        joint, text_encoder, metadata = query.joint, query.text_encoder, query.metadata
        texts = features.dataset.caption_texts
        caption_vectors = joint.embed_text_features(encode_texts(text_encoder, texts))
        image_vectors = joint.embed_image_features(features.image_embeddings)
        bank = joint.query_bank

        def embed_query(text: str, joint=joint, text_encoder=text_encoder) -> np.ndarray:
            return joint.embed_text_features(text_encoder.encode([text]))[0]

        ann_name = index_vectors = ann_search = None
        model_id = query.model_id
        if joint.kind == KIND_W2VV:
            ann_name, index_vectors = "scann image index", table.embeddings
            ann_search = _searcher(context.images.search_vectors, table.image_ids)
        elif table.joint_embeddings is not None and table.joint_model == model_id:
            ann_name, index_vectors = "scann joint index", table.joint_embeddings
            ann_search = _searcher(context.images.search_joint_vectors, table.image_ids)
        if index_vectors is not None:
            index_vectors = l2_normalize(index_vectors)
        methods.append(
            Method(
                name=name,
                family="joint",
                description={
                    "model": name,
                    "version": query.version,
                    "kind": joint.kind,
                    "text_encoder": query.text_spec.to_json(),
                    "text_encoder_id": joint.text_encoder_id,
                    "image_encoder_id": joint.image_encoder_id,
                    "trained_on": metadata.get("dataset"),
                    "query_bank": None if bank is None else bank.config(),
                },
                caption_vectors=caption_vectors,
                image_vectors=image_vectors,
                embed_query=embed_query,
                ann_name=ann_name,
                index_vectors=index_vectors,
                ann_search=ann_search,
                image_bias=None if bank is None else bank.image_bias(image_vectors),
                caption_bias=None if bank is None else bank.text_bias(caption_vectors),
                index_bias=None
                if bank is None or index_vectors is None
                else bank.image_bias(index_vectors),
            )
        )
    return methods


def _searcher(search, image_ids: list[str]) -> Callable[[np.ndarray, int], np.ndarray]:
    """Wrap a ``SearchHit`` search into ``(queries, k) -> (Q, k)`` table rows (-1: no hit).

    ``image_ids`` are the table's, in row order: ``ImageSearcher.load`` checks that its index
    holds the same rows in the same order.
    """
    row_of = {image_id: row for row, image_id in enumerate(image_ids)}

    def search_rows(queries: np.ndarray, k: int) -> np.ndarray:
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        for q, hits in enumerate(search(queries, k)):
            rows[q, : len(hits)] = [row_of[hit.image_id] for hit in hits]
        return rows

    return search_rows
