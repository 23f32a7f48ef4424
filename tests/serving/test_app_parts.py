"""The server's pure parts on their own: thumbnails cache, details row mapping, terms, config."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from serving.config import ServeConfig
from serving.details import ImageDetails
from serving.explain import MAX_TERM_CHARS, MAX_TERMS, embed_with_terms, query_terms
from serving.thumbnails import ThumbnailCache, ThumbnailError
from serving.uploads import MAX_FORM_PARTS, UploadError, file_part, multipart_parts


def _photo(path: Path, size: tuple[int, int], color: str) -> Path:
    Image.new("RGB", size, color).save(path, format="JPEG")
    return path


def test_thumbnail_cache_is_bounded_and_reads_only_on_a_miss(tmp_path: Path) -> None:
    paths = [
        _photo(tmp_path / f"{i}.jpg", (800, 400), c) for i, c in enumerate(("red", "green", "blue"))
    ]
    cache = ThumbnailCache(max_side=128, entries=2)
    first = cache.get(str(paths[0]))
    with Image.open(io.BytesIO(first)) as thumb:
        assert thumb.size == (128, 64)
    paths[0].unlink()  # cached: no read needed
    assert cache.get(str(paths[0])) == first and (cache.hits, cache.misses) == (1, 1)
    cache.get(str(paths[1]))
    cache.get(str(paths[2]))  # evicts paths[0], the least recently used
    with pytest.raises(ThumbnailError, match="cannot be read"):
        cache.get(str(paths[0]))
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(ThumbnailError, match="not a decodable image"):
        cache.get(str(tmp_path / "junk.jpg"))


def test_thumbnails_of_http_sources_go_through_the_guarded_reader(tmp_path: Path) -> None:
    """An http(s) corpus gets thumbnails too (the index job's reader: timeouts, a size cap)."""
    import functools
    import http.server
    import threading

    _photo(tmp_path / "p.jpg", (600, 300), "red")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        cache = ThumbnailCache(max_side=100, entries=4)
        with Image.open(io.BytesIO(cache.get(f"{base}/p.jpg"))) as thumb:
            assert thumb.size == (100, 50)
        with pytest.raises(ThumbnailError, match="cannot be read: HTTP 404"):
            cache.get(f"{base}/missing.jpg")
    finally:
        server.shutdown()
        server.server_close()


def test_details_map_rows_when_a_searcher_orders_them_otherwise() -> None:
    table = pa.table({"image_id": ["c", "a", "b"], "uri": ["/c", "/a", "/b"], "width": [3, 1, 2]})
    details = ImageDetails(table)
    assert details.image_ids() == ["a", "b", "c"] and details.uri_of("b") == "/b"
    assert details.describe("c")["width"] == 3 and details.describe("zz") is None
    assert details.searcher_rows(lambda r: "abc"[r]) is None  # same order
    mapping = details.searcher_rows(lambda r: "cab"[r])
    assert mapping.tolist() == [1, 2, 0]  # details row of "a" is searcher row 1, ...
    with pytest.raises(ValueError, match="the table does not"):
        details.searcher_rows(lambda r: "xyz"[r])


def test_query_terms() -> None:
    assert query_terms("A dog, a DOG and the dog's ball!") == [
        "a",
        "dog",
        "and",
        "the",
        "dog's",
        "ball",
    ]
    many = " ".join(f"w{i}" for i in range(40))
    assert len(query_terms(many)) == MAX_TERMS


def test_the_explanation_encodes_only_short_words_whatever_the_query() -> None:
    """Its work is bounded by MAX_TERMS words of at most MAX_TERM_CHARS, not by the query: a
    500-character query of two space-less runs (CJK) sends the encoder the query alone."""
    import types

    seen: list[list[str]] = []

    def encode(texts):
        seen.append(list(texts))
        return np.ones((len(texts), 4), np.float32) * np.arange(1, len(texts) + 1)[:, None]

    searcher = types.SimpleNamespace(
        text_encoder=types.SimpleNamespace(encode=encode, encoder_id="stub/v1"),
        joint=types.SimpleNamespace(embed_text_features=lambda f: f),
    )
    cjk = "狗在篮子里骑自行车戴眼镜" * 21
    query = f"{cjk[:250]} dog {cjk[:245]}"
    vector, kept, vectors, unknown = embed_with_terms(searcher, query)
    assert seen == [[query, "dog"]]
    assert kept == ["dog"] and vectors.shape == (1, 4) and vector.shape == (1, 4)
    assert unknown == [cjk[:250], cjk[:245]]
    assert all(len(t) <= MAX_TERM_CHARS for t in seen[0][1:])


def test_multipart_file_in_memory() -> None:
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n\x89PNG-bytes\r\n--XyZ--\r\n"
    )
    parts = multipart_parts(body, "multipart/form-data; boundary=XyZ")
    assert file_part(parts) == (
        "image/png",
        b"\x89PNG-bytes",
    )
    with pytest.raises(UploadError, match="no 'photo' part"):
        file_part(parts, field="photo")
    many = b"--XyZ\r\n\r\n\r\n" * (MAX_FORM_PARTS + 1) + b"--XyZ--\r\n"
    with pytest.raises(UploadError, match=f"at most {MAX_FORM_PARTS} parts"):
        multipart_parts(many, "multipart/form-data; boundary=XyZ")
    assert len(multipart_parts(many[9:], "multipart/form-data; boundary=XyZ")) == MAX_FORM_PARTS


@pytest.mark.parametrize(
    "kwargs, message",
    [({"index": ""}, "--index is required"), ({"index": "x", "default_k": 500}, "default_k"),
     ({"index": "x", "poll_interval_s": -1}, "poll_interval_s"),
     ({"index": "x", "thumbnail_max_side": 5000}, "thumbnail_max_side")],
)  # fmt: skip
def test_config_is_checked(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServeConfig(**kwargs)
