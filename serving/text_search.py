"""Text -> images through a trained joint model, over an image index loaded by ``ImageSearcher``.

The query path reuses what training used: the text encoder named in the model's metadata
(``encoders.text_registry``), the model's own NumPy towers (``encoders.joint.JointModel``) and
the index's image vectors. Word2VisualVec maps text into the image space, so it searches the
ScaNN index directly; a dual encoder's image tower is applied once at load to every indexed
vector and queries are scored exactly against that projection (BLAS; fine up to a few
hundred thousand images) -- unless the index was built with that same model version
(``imgsearch index --models DIR --joint_model NAME``): then queries search its joint-space
ScaNN shard and nothing is projected at load.

A model with a query bank (``encoders.query_bank``) has every indexed image's hubness bias
computed at load, in the space queries are searched in; a search then takes the top
``RERANK_DEPTH`` candidates (or the page depth, if deeper) from whichever path above and
re-sorts them by score minus bias, and the hits carry that corrected score.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from encoders.base import TextEncoder, l2_normalize
from encoders.joint import KIND_W2VV, JointModel
from encoders.query_bank import RERANK_DEPTH
from index.filtered_search import filtered_search
from index.scann_index import exact_top_k
from models.artifacts import LATEST
from models.query_model import check_query_encoders, load_query_model
from serving.searcher import ImageSearcher, SearchHit

logger = logging.getLogger(__name__)


def _index_matches(
    joint_index: dict | None, model_version: tuple[str, str] | None, dim: int
) -> bool:
    if joint_index is None or model_version is None:
        return False
    name, version = model_version
    matches = (joint_index["model"], joint_index["model_version"]) == (name, version)
    if not matches:
        logger.info(
            "the index's joint shard is from %s/%s, not %s/%s: projecting the index at load",
            joint_index["model"],
            joint_index["model_version"],
            name,
            version,
        )
    return matches and joint_index["dim"] == dim


class TextSearcher:
    """``search(query, k)`` over an ``ImageSearcher`` with a joint model and its text encoder."""

    def __init__(
        self,
        images: ImageSearcher,
        joint: JointModel,
        text_encoder: TextEncoder,
        model_version: tuple[str, str] | None = None,
    ) -> None:
        """``model_version`` is the joint model's ``(name, version)``: when the index holds a
        joint shard made by that same version, queries search it instead of a projection."""
        check_query_encoders(
            joint, image_encoder_id=images.encoder_id, text_encoder_id=text_encoder.encoder_id
        )
        self.images, self.joint, self.text_encoder = images, joint, text_encoder
        self.uses_joint_index = joint.kind != KIND_W2VV and _index_matches(
            images.joint_index, model_version, joint.dim
        )
        # Dual encoder without a matching joint shard: the index's vectors in the joint space,
        # computed once at load.
        self._joint_images = (
            None
            if joint.kind == KIND_W2VV or self.uses_joint_index
            else images.vectors.map_chunks(joint.embed_image_features)
        )
        self.image_bias = self._image_bias()

    def _image_bias(self) -> np.ndarray | None:
        """Each indexed row's hubness bias in the searched space, or None (no query bank)."""
        bank = self.joint.query_bank
        if bank is None:
            return None
        started = time.perf_counter()
        if self._joint_images is not None:
            bias = bank.image_bias(self._joint_images)
        elif self.joint.kind == KIND_W2VV:
            bias = bank.image_bias(self.images.vectors)
        else:  # the joint shard's vectors, projected a chunk at a time rather than all read
            embed = self.joint.embed_image_features
            bias = self.images.vectors.map_chunks(lambda rows: bank.image_bias(embed(rows)))
        logger.info(
            "hubness bias of %d images from a bank of %d queries in %.1f s",
            len(bias),
            len(bank.texts),
            time.perf_counter() - started,
        )
        return bias

    @classmethod
    def load(
        cls,
        images: ImageSearcher,
        models_dir: str | Path,
        model: str | None = None,
        version: str = LATEST,
    ) -> TextSearcher:
        query = load_query_model(models_dir, model, version, image_encoder_id=images.encoder_id)
        return cls(images, query.joint, query.text_encoder, query.model_version)

    def embed_queries(self, queries: list[str]) -> np.ndarray:
        """Query strings -> unit vectors in the space the index is searched in.

        A query with no word the text encoder knows has an all-zero feature row; the towers
        would turn it into a constant vector (their biases) and return the same images for
        any such query, so it is refused instead.
        """
        features = self.text_encoder.encode(queries)
        unknown = [q for q, row in zip(queries, features, strict=True) if not np.any(row)]
        if unknown:
            raise ValueError(
                f"no word of {unknown[0]!r} is known to text encoder {self.text_encoder.encoder_id}"
            )
        return self.joint.embed_text_features(features)

    def search_many(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        return self.search_embedded(self.embed_queries(queries), k)

    def search_embedded(
        self, vectors: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> list[list[SearchHit]]:
        """Search with query vectors already in the search space (``embed_queries`` rows).

        For callers that embed more than the query in one encoder call (the server embeds
        the query and its words together, to explain each hit). ``allowed``: a boolean mask
        over the index's rows (a metadata filter); only those rows are results.
        """
        if self.image_bias is None:
            return self._search_plain(vectors, k, allowed)
        candidates = self._search_plain(vectors, max(k, RERANK_DEPTH), allowed)
        return [self._corrected(hits)[:k] for hits in candidates]

    def _corrected(self, hits: list[SearchHit]) -> list[SearchHit]:
        """``hits`` rescored by score minus bias, best first (ties keep the index's order)."""
        row_of, bias = self.images.row_of, self.image_bias
        rescored = [
            SearchHit(hit.image_id, hit.uri, hit.score - float(bias[row_of(hit.image_id)]))
            for hit in hits
        ]
        return sorted(rescored, key=_by_score)

    def _search_plain(
        self, vectors: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> list[list[SearchHit]]:
        if self.uses_joint_index:
            return self.images.search_joint_vectors(vectors, k, allowed)
        if self._joint_images is None:
            return self.images.search_vectors(vectors, k, allowed)
        vectors = l2_normalize(vectors)
        joint_images = self._joint_images
        if allowed is None:
            rows, scores = exact_top_k(joint_images, vectors, min(k, len(joint_images)))
        else:  # the "ANN" of a loose filter is the exact search over every row, here
            found = filtered_search(
                vectors,
                allowed,
                k,
                lambda q, n: exact_top_k(joint_images, q, n),
                lambda rows: joint_images[rows],
            )
            rows, scores = found.indices, found.scores
        return [
            [
                self.images.hit_for_row(int(r), float(s))
                for r, s in zip(rr, ss, strict=True)
                if r >= 0  # -1: fewer allowed rows than asked for
            ]
            for rr, ss in zip(rows, scores, strict=True)
        ]

    def score_all(self, queries: list[str]) -> np.ndarray:
        """``(Q, N)`` exact scores of every indexed image (fusion needs them all, not a top-k).

        The dual tower's projection of the index is computed on the first call and kept.
        """
        scores = self._plain_scores(l2_normalize(self.embed_queries(queries)))
        return scores if self.image_bias is None else scores - self.image_bias[None]

    def _plain_scores(self, vectors: np.ndarray) -> np.ndarray:
        if self.joint.kind == KIND_W2VV:
            return self.images.vectors.dot(vectors)
        projected = self._joint_images
        if projected is None:  # the index has this model's joint shard: project once, here
            projected = getattr(self, "_scored_images", None)
            if projected is None:
                projected = self._scored_images = self.images.vectors.map_chunks(
                    self.joint.embed_image_features
                )
        return vectors @ projected.T

    def search(self, query: str, k: int = 10) -> list[SearchHit]:
        if not query.strip():
            raise ValueError("empty text query")
        return self.search_many([query], k)[0]


def _by_score(hit: SearchHit) -> float:
    return -hit.score
