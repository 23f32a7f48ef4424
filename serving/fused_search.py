"""Fused text search: joint embedding, generated-caption and tag scores in one ranking.

``FusedSearcher`` scores every indexed image with each part -- the joint model
(``TextSearcher.score_all``), a caption-matching method over the table's ``caption`` column and
GloVe tag matching over its ``tags`` column -- and fuses them with the weights
``imgsearch train fusion`` fitted (``weighted_fusion``), or by reciprocal rank fusion when none
were fitted. Each hit says why it matched: its caption, its tags, the tag each query word
matched, and every part's score. Scoring is exact over all images (BLAS), fine up to a few
hundred thousand images.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index.schema import CAPTION, TAGS
from index.table import read_caption_texts, read_table_columns, table_has_columns
from ranking.fusion import reciprocal_rank_fusion, weighted_fusion
from serving.searcher import ImageSearcher
from serving.text_search import TextSearcher

logger = logging.getLogger(__name__)

DEFAULT_CAPTION_METHOD = "caption-bm25"
TAG_METHOD = "tags-glove"


@dataclasses.dataclass(frozen=True)
class FusedHit:
    image_id: str
    uri: str
    score: float
    parts: dict[str, float]  # each method's own score for this image
    caption: str | None = None
    tags: list[dict[str, Any]] | None = None
    matched_tags: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class FusedSearcher:
    """``search(query, k)`` over several representations of the same indexed images."""

    def __init__(
        self,
        joints: Mapping[str, TextSearcher],
        captions: Sequence[str] | None = None,
        tags: Sequence[Sequence[dict[str, Any]]] | None = None,
        weights: dict[str, float] | None = None,
        caption_method: str = DEFAULT_CAPTION_METHOD,
        tag_synonyms: Sequence[Sequence[str]] = (),
        caption_beams: Sequence[Sequence[str]] | None = None,
    ) -> None:
        from encoders.text_match import make_caption_scorer

        if not joints:
            raise ValueError("fused search needs at least one joint model")
        self.images = next(iter(joints.values())).images
        self.captions = list(captions) if captions is not None else None
        self.tags = [list(t) for t in tags] if tags is not None else None
        self.weights = weights
        self._scorers: dict[str, Callable[[Sequence[str]], np.ndarray]] = {
            name: text.score_all for name, text in joints.items()
        }
        # Only the parts that count: a zero weight needs no scorer (MiniLM takes seconds to load).
        wanted = {n for n, w in weights.items() if w} if weights else {caption_method, TAG_METHOD}
        if self.captions is not None:
            for name in sorted(w for w in wanted if w.startswith("caption-")):
                # Each image scores as its best-matching beam (``captions``), when the
                # index kept them; ``captions`` (the top beam) is what a hit shows.
                documents = caption_beams if caption_beams is not None else self.captions
                self._scorers[name] = make_caption_scorer(name, documents)
        self._matcher = None
        if self.tags is not None:  # matched for the explanations even when not scored
            from encoders.glove import load_glove
            from encoders.tag_match import TagMatcher
            from encoders.tags import tag_lists

            self._matcher = TagMatcher(load_glove(), tag_synonyms)
            image_tags = tag_lists(self.tags)
            if TAG_METHOD in wanted:
                self._scorers[TAG_METHOD] = lambda q: self._matcher.score(q, image_tags)
        if weights:
            missing = [n for n, w in weights.items() if w and n not in self._scorers]
            if missing:
                raise ValueError(
                    f"the fusion weights need {missing}, which this index cannot give (index "
                    f"with --tag_head / --captioner, or use the joint model they were fitted with)"
                )
        logger.info("fused search over %s (%s)", sorted(self._scorers),
                    "fitted weights" if weights else "reciprocal rank fusion")  # fmt: skip

    @classmethod
    def load(
        cls, images: ImageSearcher, index_dir: str, models_dir: str | Path, model: str | None = None
    ) -> FusedSearcher:
        """The index's tag/caption columns, the latest fitted fusion weights in ``models_dir``
        and every joint model they weigh; without weights (or when ``model`` names a joint
        model they do not weigh), ``model`` (or the default) with reciprocal rank fusion."""
        from encoders.joint import JOINT_KINDS
        from encoders.tags import TagHead, resolve_tag_head
        from models.artifacts import list_models
        from models.fusion_weights import fusion_weights
        from models.query_model import default_joint_model

        ids = [images.hit_for_row(i, 0.0).image_id for i in range(len(images))]
        tags = None
        if table_has_columns(index_dir, [TAGS]):
            tags = read_table_columns(index_dir, [TAGS], ids)[TAGS]
        # Every beam the index kept; the first is the ``caption`` a hit shows.
        beams = (
            read_caption_texts(index_dir, ids) if table_has_columns(index_dir, [CAPTION]) else None
        )
        joint_names = {m.name for m in list_models(models_dir) if m.kind in JOINT_KINDS}
        fitted = fusion_weights(models_dir)
        weights = fitted[0] if fitted is not None else None
        if weights is not None and model is not None and not weights.get(model):
            logger.info("fusion weights do not weigh %s: reciprocal rank fusion instead", model)
            weights = None
        if weights is not None:
            names = [n for n, w in weights.items() if w and n in joint_names]
        else:
            names = [model or default_joint_model(models_dir)]
        joints = {name: TextSearcher.load(images, models_dir, name) for name in names}
        caption_method = DEFAULT_CAPTION_METHOD
        if weights:
            caption_method = next((n for n in weights if n.startswith("caption-")), caption_method)
        synonyms: tuple = ()
        try:
            synonyms = TagHead.load(resolve_tag_head("auto")).synonyms
        except FileNotFoundError:
            pass
        captions = None if beams is None else [texts[0] for texts in beams]
        return cls(joints, captions, tags, weights, caption_method, synonyms, beams)

    @property
    def methods(self) -> list[str]:
        return sorted(self._scorers)

    def part_scores(self, queries: Sequence[str]) -> dict[str, np.ndarray]:
        return {name: scorer(list(queries)) for name, scorer in self._scorers.items()}

    def search(self, query: str, k: int = 10, allowed: np.ndarray | None = None) -> list[FusedHit]:
        """The top ``k`` by fused score (ties: lower row), of the ``allowed`` rows if given."""
        if not query.strip():
            raise ValueError("empty text query")
        parts = self.part_scores([query])
        if self.weights:
            fused = weighted_fusion(parts, self.weights)[0]
        else:
            fused = reciprocal_rank_fusion(parts)[0]
        if allowed is not None:  # scoring is exact over every row: a filter is a mask here
            rows = np.flatnonzero(allowed)
            rows = rows[np.argsort(-fused[rows], kind="stable")[:k]]
        else:
            rows = np.argsort(-fused, kind="stable")[: min(k, len(fused))]
        hits = []
        for row in rows:
            hit = self.images.hit_for_row(int(row), float(fused[row]))
            tags = self.tags[row] if self.tags is not None else None
            matched = []
            if self._matcher is not None and tags:
                matched = self._matcher.explain(query, [(t["label"], t["score"]) for t in tags])
            hits.append(
                FusedHit(
                    image_id=hit.image_id,
                    uri=hit.uri,
                    score=hit.score,
                    parts={name: round(float(s[0, row]), 4) for name, s in parts.items()},
                    caption=self.captions[row] if self.captions is not None else None,
                    tags=tags,
                    matched_tags=matched,
                )
            )
        return hits
