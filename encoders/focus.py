"""Focused image queries: pool the CNN's last feature map towards one class before searching.

"Given a photo of a cat and a bottle, find similar cats." The indexed vectors are the globally
average-pooled feature map; a focused query pools the same ``(h, w, C)`` map differently, using
the ImageNet classifier head (``encoders.tags.TagHead``) to say where, or in which channels, the
class of interest lives, and then searches the unchanged index:

- ``"cam"`` (class activation mapping, Zhou et al. 2016): ``cam = relu(map @ w)`` per cell,
  scaled to a maximum of 1, then ``pooled = mean over cells of cam * map``. Cells where the class
  has no evidence stop counting; a map with no evidence anywhere pools plainly.
- ``"channels"``: ``pooled = mean(map) * relu(w) / max(relu(w))``: keep the channels the class
  relies on, drop the rest.
- ``"channels+class"`` (the default): the unit channel pool plus the unit class direction
  ``w / |w|``. Against a unit index vector ``x`` its score is ``cos(pool, x) + cos(w, x)``:
  as near this photo in the class' channels as it is likely to show the class (the head's
  logit, up to its bias), so neighbours that show the class without the photo's background
  rise above ones that share only the background.

``w`` is the head's weight column of the class; for a word naming several classes ("dog": 118
breeds) it is the mean of their columns, or their mix by how likely the image makes each
(``class_vector``; measured no better on COCO-mini, so serving uses the mean).

``FocusVocabulary`` maps what a user types onto head classes: a label or synonym ("tabby",
"tabby cat"), a head noun or ImageNet hypernym of labels (``encoders.tag_match.label_terms``:
"bottle" -> beer/wine/water/pop/pill bottle, "dog" -> every breed), else the nearest labels in
GloVe space ("puppy"). Pure NumPy: no TensorFlow, no I/O.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence

import numpy as np

from encoders.base import l2_normalize
from encoders.glove import WordVectors
from encoders.tag_match import FUNCTION_WORDS, TagMatcher, label_terms
from encoders.tags import IGNORED_LABELS
from encoders.text_tokenize import tokenize_words

FOCUS_METHODS = ("cam", "channels", "channels+class")
# benchmarks/results/focus_search.md, COCO-mini P@5 of the focused class: plain 0.12, CAM 0.15,
# channels 0.19, channels + the class direction 0.22 (the class direction alone, which ignores
# the photo, 0.22 too); a uniform mix of a word's classes did as well as the image-probability
# mix.
DEFAULT_METHOD = "channels+class"
# A GloVe match is kept when its relevance (cos ** 3, encoders.tag_match) is at least this, and
# within GLOVE_RATIO of the best label's: cos >= ~0.79 ("puppy" -> dog breeds, not "cat").
GLOVE_MIN_RELEVANCE = 0.5
GLOVE_RATIO = 0.85
GLOVE_MAX_CLASSES = 10
HINT_LABELS = 5


def _check_map(feature_map: np.ndarray, weights: np.ndarray) -> np.ndarray:
    feature_map = np.asarray(feature_map, dtype=np.float32)
    if feature_map.ndim != 3 or feature_map.shape[-1] != weights.shape[-1]:
        raise ValueError(
            f"a feature map must be (h, w, {weights.shape[-1]}), got {feature_map.shape}"
        )
    return feature_map


def class_activation_map(feature_map: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(h, w, C)`` map, ``(C,)`` class weights -> ``(h, w)`` CAM: ReLU, scaled to max 1.

    All zeros when the class has no positive evidence in any cell.
    """
    weights = np.asarray(weights, dtype=np.float32)
    feature_map = _check_map(feature_map, weights)
    cam = np.maximum(feature_map @ weights, 0.0)
    peak = float(cam.max()) if cam.size else 0.0
    return cam / peak if peak > 0 else np.zeros_like(cam)


def cam_pool(feature_map: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(h, w, C)`` -> ``(C,)``: cells weighted by the class' CAM, then average-pooled.

    A map without evidence for the class anywhere pools plainly (the unfocused vector).
    """
    cam = class_activation_map(feature_map, weights)
    feature_map = np.asarray(feature_map, dtype=np.float32)
    if not cam.any():
        return feature_map.mean(axis=(0, 1))
    return (feature_map * cam[..., np.newaxis]).mean(axis=(0, 1))


def channel_weights(weights: np.ndarray) -> np.ndarray:
    """``(C,)`` class weights -> ``(C,)`` channel scales: the positive part, scaled to max 1."""
    positive = np.maximum(np.asarray(weights, dtype=np.float32), 0.0)
    peak = float(positive.max()) if positive.size else 0.0
    if peak <= 0:
        raise ValueError("the class has no positive head weight: nothing to focus on")
    return positive / peak


def channel_pool(feature_map: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(h, w, C)`` -> ``(C,)``: the plain average pool with channels scaled by the class'
    positive head weights."""
    weights = np.asarray(weights, dtype=np.float32)
    feature_map = _check_map(feature_map, weights)
    return feature_map.mean(axis=(0, 1)) * channel_weights(weights)


def class_vector(
    kernel: np.ndarray, classes: Sequence[int], probabilities: np.ndarray | None = None
) -> np.ndarray:
    """The head's ``(C,)`` weights for a set of classes: their kernel columns mixed by
    ``probabilities`` (the image's softmax over all classes) renormalised over the set, or
    uniformly when None or when the image gives the set no probability."""
    if not classes:
        raise ValueError("focus needs at least one class")
    columns = np.asarray(kernel, dtype=np.float32)[:, list(classes)]
    mix = np.full(len(classes), 1.0 / len(classes), dtype=np.float32)
    if probabilities is not None:
        chosen = np.asarray(probabilities, dtype=np.float32)[list(classes)]
        if chosen.sum() > 0:
            mix = chosen / chosen.sum()
    return columns @ mix


def focused_vector(
    feature_map: np.ndarray,
    kernel: np.ndarray,
    classes: Sequence[int],
    method: str = DEFAULT_METHOD,
    probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """One image's ``(h, w, C)`` map -> its unit ``(C,)`` query vector focused on ``classes``.

    ``method``: ``"cam"``, ``"channels"`` or ``"channels+class"`` (module docstring). A
    ``(views, h, w, C)`` stack (the photo and its mirror, for an encoder that averages both)
    averages the views' pools.
    The vector lives in the space of the indexed (plainly pooled, L2-normalised) vectors, so it
    searches the same index.
    """
    if method not in FOCUS_METHODS:
        raise ValueError(f"focus method must be one of {FOCUS_METHODS}, got {method!r}")
    weights = class_vector(kernel, classes, probabilities)
    pool = cam_pool if method == "cam" else channel_pool
    views = np.asarray(feature_map, dtype=np.float32)
    views = views[np.newaxis] if views.ndim == 3 else views
    pooled = l2_normalize(np.mean([pool(view, weights) for view in views], axis=0)[np.newaxis])
    if method == "channels+class":
        # Both unit: the photo's focused look and the class itself count alike.
        pooled = pooled + weights / np.linalg.norm(weights)
    return l2_normalize(pooled)[0]


@dataclasses.dataclass(frozen=True)
class FocusTarget:
    """What a focus word resolved to: head class indices, their display labels, and how."""

    query: str
    classes: tuple[int, ...]
    labels: tuple[str, ...]
    match: str  # "label" (a label or synonym), "term" (head noun / hypernym), "glove"

    def to_json(self) -> dict:
        return {"focus": self.query, "match": self.match, "labels": list(self.labels)}


class UnknownFocus(ValueError):
    """A focus word no head class matches; ``nearest`` holds the closest labels as a hint."""

    def __init__(self, query: str, nearest: Sequence[str]) -> None:
        self.query, self.nearest = query, list(nearest)
        hint = f"; nearest labels: {', '.join(self.nearest)}" if self.nearest else ""
        super().__init__(f"no classifier label matches focus {query!r}{hint}")


def _normal(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").split())


class FocusVocabulary:
    """Focus words -> head classes, from the head's synonyms and (optionally) GloVe vectors.

    ``synonyms`` are ``TagHead.synonyms`` (per class, display label first). Without
    ``vectors`` only labels, synonyms, head nouns and hypernyms resolve.
    """

    def __init__(
        self, synonyms: Sequence[Sequence[str]], vectors: WordVectors | None = None
    ) -> None:
        self.labels = [names[0] for names in synonyms]
        self._usable = [i for i, label in enumerate(self.labels) if label not in IGNORED_LABELS]
        self._by_name: dict[str, list[int]] = {}
        self._by_term: dict[str, list[int]] = {}
        terms = label_terms(synonyms)
        for i in self._usable:
            for name in synonyms[i]:
                self._by_name.setdefault(_normal(name), []).append(i)
            for term in terms[self.labels[i]]:
                self._by_term.setdefault(_normal(term), []).append(i)
        self._matcher = TagMatcher(vectors, synonyms) if vectors is not None else None

    def resolve(self, focus: str) -> FocusTarget:
        """A focus word or phrase -> its classes; ``UnknownFocus`` (a ValueError) with the
        nearest labels when nothing matches."""
        query = _normal(focus)
        if not query:
            raise ValueError("empty focus: name a class, e.g. cat")
        for match, table in (("label", self._by_name), ("term", self._by_term)):
            found = table.get(query)
            if found:
                return self._target(query, sorted(set(found)), match)
        scores = self._glove_scores(query)
        if scores is not None and scores.max() >= GLOVE_MIN_RELEVANCE:
            best = float(scores.max())
            order = np.argsort(-scores, kind="stable")[:GLOVE_MAX_CLASSES]
            chosen = [
                int(j) for j in order if scores[j] >= max(GLOVE_MIN_RELEVANCE, GLOVE_RATIO * best)
            ]
            return self._target(query, sorted(self._usable[j] for j in chosen), "glove")
        raise UnknownFocus(focus.strip(), self.nearest(query))

    def nearest(self, focus: str, n: int = HINT_LABELS) -> list[str]:
        """The ``n`` labels closest to ``focus``: by GloVe when it knows a word, else spelling."""
        query = _normal(focus)
        scores = self._glove_scores(query)
        if scores is not None and scores.max() > 0:
            order = np.argsort(-scores, kind="stable")[:n]
            return [self.labels[self._usable[j]] for j in order if scores[j] > 0]
        names = list(self._by_name)
        close = difflib.get_close_matches(query, names, n=n, cutoff=0.6)
        return [self.labels[self._by_name[name][0]] for name in close]

    def _glove_scores(self, query: str) -> np.ndarray | None:
        """Mean over the query's content words of each usable label's relevance, or None."""
        if self._matcher is None:
            return None
        tokens = [t for t in tokenize_words([query])[0] if t not in FUNCTION_WORDS]
        words = self._matcher.vectors.known_tokens(tokens)
        if not words:
            return None
        usable = [self.labels[i] for i in self._usable]
        return self._matcher.relevance_matrix(words, usable).mean(axis=0)

    def _target(self, query: str, classes: Sequence[int], match: str) -> FocusTarget:
        return FocusTarget(query, tuple(classes), tuple(self.labels[i] for i in classes), match)
