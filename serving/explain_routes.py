"""Why this image: a Grad-CAM heatmap of the regions that raised an indexed image's score.

``GET /api/explain/{image_id}?q=TEXT`` explains the joint similarity of a text query (embedded
by the joint model's text tower, as a text search embeds it) to the image;
``?similar_to=ID`` explains the image-image cosine of "more like this" in the CNN's embedding
space. The answer is a PNG: the photo (upright, its longer side at most ``MAX_SIDE`` pixels,
never enlarged) with the heat over the centre crop the encoder saw and the rest darkened.
``map=negative`` draws where the features pulled the score down instead. Headers:
``X-Explain-Score`` (the score recomputed from the photo) and ``X-Explain-Peak`` (``x,y`` of
the hottest pixel in the PNG).

The photo is read again from its indexed uri (the uri comes from the index version, never from
the request, as for thumbnails), decoded as indexing decodes it, and one CNN pass gives the
spatial map and the pooled features; the gradient is analytic (``encoders.saliency``). At most
``MAX_CONCURRENT`` explanations run at once; beyond that the route answers 429 with
``Retry-After``.
"""

# No `from __future__ import annotations`: FastAPI must see the real Annotated types of the
# handler defined inside add_explain_routes (bounds from the config).

import dataclasses
import io
import threading
from typing import Annotated, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import Response
from PIL import Image

from encoders import saliency
from encoders.base import l2_normalize
from encoders.decode_pool import BoundDecoder, bound_decoder
from encoders.imaging import DecodeLimits
from serving.config import ServeConfig
from serving.query_error import QueryError
from serving.reloader import VersionHolder
from serving.sources import SourceUnavailable, read_source
from serving.state import IndexBundle, QueryModels

MAX_SIDE = 512  # the PNG's longer side, at most
MAX_CONCURRENT = 2  # explanations running at once (each is one CNN pass, ~50 ms of 2 cores)
RETRY_AFTER_S = 1
_MAX_ID_CHARS = 256
_ERRORS = {
    400: "Neither or both of q and similar_to, no word of q is known, or q past the length limit",
    404: "No such image in the serving index version (or its photo cannot be read)",
    422: "Invalid parameter, or the photo cannot be decoded",
    429: "Too many explanations running: retry after Retry-After seconds",
    503: "The index encoder has no spatial map, or text needs a joint model that is not loaded",
}
MAPS = ("positive", "negative")
_DEFAULT_DECODER = bound_decoder(DecodeLimits())


@dataclasses.dataclass(frozen=True)
class Explanation:
    """One image's heat maps and the picture they are drawn over.

    ``positive``/``negative`` are the CNN-cell maps ``(h, w)`` (``encoders.saliency.grad_cam``);
    ``picture`` is the upright photo at display size ``(H, W, 3)`` uint8 and ``box`` the
    ``(left, top, right, bottom)`` part of it the encoder saw; ``width``/``height`` the photo's
    own upright size.
    """

    image_id: str
    score: float
    positive: np.ndarray
    negative: np.ndarray
    picture: np.ndarray
    box: tuple[float, float, float, float]
    width: int
    height: int

    def cells(self, which: str = "positive") -> np.ndarray:
        if which not in MAPS:
            raise ValueError(f"map must be one of {MAPS}, got {which!r}")
        return self.positive if which == "positive" else self.negative

    def heat(self, which: str = "positive") -> np.ndarray:
        """``(H, W)`` in [0, 1] over the picture (zero outside ``box``)."""
        frame = (self.picture.shape[1], self.picture.shape[0])
        return saliency.scale_unit(saliency.heat_in_frame(self.cells(which), frame, self.box))

    def peak(self, which: str = "positive", in_picture: bool = False) -> tuple[float, float]:
        """``(x, y)`` of the hottest cell's centre in the photo's own (upright) pixels, or in
        the picture's with ``in_picture``."""
        x, y = saliency.peak_point(self.cells(which), self.box)
        if in_picture:
            return x, y
        return x * self.width / self.picture.shape[1], y * self.height / self.picture.shape[0]


def png_bytes(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, format="PNG", compress_level=1)  # speed over size
    return out.getvalue()


def display_size(width: int, height: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """``(height, width)`` of the picture: the photo's shape, longer side <= ``max_side``."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _target(
    bundle: IndexBundle, text: str | None, similar_to: str | None, text_off: str | None
) -> tuple[np.ndarray, tuple]:
    """The unit target vector and the image tower it is scored through."""
    if similar_to is not None:
        try:
            row = bundle.searcher_row(similar_to)
        except KeyError as exc:
            raise QueryError(404, f"image {similar_to!r} is not in index version "
                                    f"{bundle.version}") from exc  # fmt: skip
        return np.asarray(bundle.images.vectors[row], np.float32), ()
    if bundle.text is None:
        raise QueryError(503, text_off or "text explanations need a joint model")
    try:
        vector = bundle.text.embed_queries([text or ""])[0]
    except ValueError as exc:  # no known word
        raise QueryError(400, str(exc)) from exc
    return l2_normalize(vector), bundle.text.joint.image_layers


def pooled_and_map(encode, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One photo's pooled features ``(C,)`` and a map ``(h, w, C)`` whose mean they are.

    ``encode`` is an encoder's ``encode_with_features``. For most encoders the map is the CNN's
    own; an encoder that also averages the mirrored photo's pass (``mobilenet_v2_flip``) gets
    a second pass here, mirrored back and averaged in, so the heat counts both passes (the
    gradient reaches each pass's map with half the weight). QueryError 503 if neither holds.
    """
    _, pooled, spatial = encode(pixels[np.newaxis])
    pooled, own = pooled[0].astype(np.float64), spatial[0].astype(np.float64)
    if np.allclose(own.mean(axis=(0, 1)), pooled, rtol=1e-3, atol=1e-4):
        return pooled, own
    _, _, mirrored = encode(np.ascontiguousarray(pixels[np.newaxis, :, ::-1]))
    both = (own + mirrored[0][:, ::-1].astype(np.float64)) / 2
    if not np.allclose(both.mean(axis=(0, 1)), pooled, rtol=1e-3, atol=1e-4):
        raise QueryError(503, "the encoder's pooled features are not its spatial map's mean")
    return pooled, both


def explain(
    bundle: IndexBundle,
    image_id: str,
    text: str | None = None,
    similar_to: str | None = None,
    decode: BoundDecoder = _DEFAULT_DECODER,
    text_off: str | None = None,
    max_side: int = MAX_SIDE,
) -> Explanation:
    """Grad-CAM of ``image_id``'s score for ``text`` (joint space) or ``similar_to`` (another
    indexed image, the CNN's space). Exactly one of them. QueryError on any refusal."""
    if (text is None) == (similar_to is None):
        raise QueryError(400, "give exactly one of q (a text query) and similar_to (an id)")
    if text is not None and not text.strip():
        raise QueryError(400, "empty text query")
    uri = bundle.details.uri_of(image_id)
    if uri is None:
        raise QueryError(404, f"image {image_id!r} is not in index version {bundle.version}")
    encoder = bundle.images.image_encoder()
    encode = getattr(encoder, "encode_with_features", None)
    if encode is None:
        raise QueryError(503, f"image encoder {encoder.encoder_id} gives no spatial feature "
                                "map to explain with")  # fmt: skip
    target, layers = _target(bundle, text, similar_to, text_off)
    try:
        data = read_source(uri)
    except SourceUnavailable as exc:
        raise QueryError(404, str(exc)) from exc
    try:
        pixels, width, height = decode(data, encoder.input_size)
        picture, _, _ = decode(data, display_size(width, height, max_side))
    except ValueError as exc:  # ImageRejected
        raise QueryError(422, f"the photo cannot be decoded: {exc}") from exc
    pooled, spatial = pooled_and_map(encode, pixels)
    score, gradient = saliency.score_gradient(pooled, target, layers)
    weights = saliency.cam_weights(gradient, spatial.shape)
    positive, negative = saliency.grad_cam(spatial, weights)
    frame = (picture.shape[1], picture.shape[0])
    return Explanation(
        image_id=image_id,
        score=score,
        positive=positive,
        negative=negative,
        picture=picture,
        box=saliency.cover_box(frame, encoder.input_size),
        width=width,
        height=height,
    )


def explanation_png(explanation: Explanation, which: str = "positive") -> tuple[bytes, dict]:
    """The picture, darkened outside ``box``, the heat blended in, as a PNG; and its
    ``X-Explain-*`` headers (the peak in the PNG's pixels)."""
    heat = explanation.heat(which)
    x, y = explanation.peak(which, in_picture=True)
    image = saliency.overlay(saliency.dim_outside(explanation.picture, explanation.box), heat)
    headers = {
        "X-Explain-Score": f"{explanation.score:.6f}",
        "X-Explain-Peak": f"{int(x)},{int(y)}",
        "Cache-Control": "no-store",
    }
    return png_bytes(image), headers


def add_explain_routes(
    app: FastAPI, holder: VersionHolder, models: QueryModels, config: ServeConfig
) -> None:
    """``GET /api/explain/{image_id}``, bounded to ``MAX_CONCURRENT`` at once."""
    running = threading.BoundedSemaphore(MAX_CONCURRENT)
    app.state.explain_slots = running  # tests hold slots to see the 429

    @app.get(
        "/api/explain/{image_id:path}",
        tags=["images"],
        summary="Why this image: a heatmap (PNG) of the regions that raised its score",
        responses={code: {"description": text} for code, text in _ERRORS.items()},
        response_class=Response,
    )
    def explain_image(
        image_id: str,
        q: Annotated[str | None, Query(max_length=config.max_query_chars)] = None,
        similar_to: Annotated[str | None, Query(max_length=_MAX_ID_CHARS)] = None,
        map: Annotated[Literal["positive", "negative"], Query(description="which sign")] = (
            "positive"
        ),
    ) -> Response:
        if not running.acquire(blocking=False):
            raise HTTPException(
                429,
                f"{MAX_CONCURRENT} explanations are running: retry shortly",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        try:
            found = explain(holder.current, image_id, q, similar_to, config.query_decoder(),
                            models.text_off_reason)  # fmt: skip
            data, headers = explanation_png(found, map)
        finally:  # a QueryError answers through the app's handler, like HTTPException
            running.release()
        return Response(data, media_type="image/png", headers=headers)
