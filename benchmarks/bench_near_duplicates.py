"""Near-duplicate groups: precision and recall on real photos, a threshold sweep, and the cost.

Run: ``.venv/bin/python benchmarks/bench_near_duplicates.py [--originals 1000] [--variants 4]
[--encoders mobilenet_v2 mobilenet_v2_flip] [--scale 100000]``

Corpus (ground truth known by construction): the Flickr8k dev photos (``--originals``, sorted by
name), each with ``--variants`` variants made by ``benchmarks/variant_corpus.variant_bytes``
(a crop of 88-100% of each side, a mirror on odd variants, a brightness change of up to 10%,
JPEG quality 90): an original and its variants form one true group. Every Flickr8k train photo
is added once, as a distractor (no variant), so false positives between different photos have
a real chance to happen.

Each image is decoded as the index job decodes it (``encoders.imaging.decode_image``) and
encoded with ``encoders.registry`` directly, once per encoder (cached under ``--cache``). The
groups are then made exactly as the index job makes them (``index.near_duplicates``: the
``NEIGHBOURS`` nearest neighbours of every row, pairs at or above the threshold, union-find
components split into stars around a representative), from an exact self-join here (under
20k rows the job's ScaNN index is brute force, so the job finds the same pairs).

Figures: pairwise precision and recall over same-group pairs, with the star split (what the
job writes) and with plain connected components (no chaining guard), over a threshold sweep;
the score of each variant to its original, mirrored or not; the pairs of different photos
that score highest (Flickr8k holds some true near-duplicates of its own: they are listed so
a reader can judge them). Then the self-join's cost at ``--scale`` rows: the real vectors
plus vectors grown from them (``benchmarks/bench_ann.py``'s recipe: a real embedding
interpolated towards one of its 10 nearest real neighbours, plus noise shaped like the data),
indexed by ScaNN with the size rules the index job uses, every row queried, ms per image, and
the recall of the true pairs there. Writes ``benchmarks/results/near_duplicates.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import logging
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import machine_line
from benchmarks.variant_corpus import variant_bytes

logger = logging.getLogger("bench_near_duplicates")

RESULTS = REPO / "benchmarks" / "results" / "near_duplicates.md"


@dataclasses.dataclass(frozen=True)
class Item:
    """One image of the benchmark corpus: ``variant`` 0 is the photo's own file."""

    photo: Path
    variant: int

    @property
    def key(self) -> str:
        return self.photo.name if self.variant == 0 else f"{self.photo.stem}-v{self.variant:02d}"


@dataclasses.dataclass(frozen=True)
class Corpus:
    items: list[Item]
    labels: np.ndarray  # the true group of each item: its photo's number
    mirrored: np.ndarray  # bool: the variant is mirrored (odd variants)

    def digest(self) -> str:
        text = "\n".join(item.key for item in self.items)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def flickr_dir() -> Path:
    from imgsearch import settings

    assets = settings.assets_dir()
    if assets is None:
        raise SystemExit(
            "no assets folder (../shared/assets): " + settings.describe_assets_layout()
        )
    return assets / "datasets" / "flickr8k"


def build_corpus(originals: int, variants: int) -> Corpus:
    """The first ``originals`` dev photos with their variants, then every train photo alone."""
    root = flickr_dir()
    dev = sorted((root / "splits" / "dev.txt").read_text().split())[:originals]
    train = sorted((root / "splits" / "train.txt").read_text().split())
    items, labels = [], []
    for number, name in enumerate(dev):
        for variant in range(variants + 1):
            items.append(Item(root / "images" / name, variant))
            labels.append(number)
    for number, name in enumerate(train, start=len(dev)):
        items.append(Item(root / "images" / name, 0))
        labels.append(number)
    mirrored = np.array([item.variant % 2 == 1 for item in items])
    return Corpus(items, np.array(labels), mirrored)


def _pixels(item: Item, size: int) -> np.ndarray:
    from encoders.imaging import decode_image

    data = item.photo.read_bytes() if item.variant == 0 else variant_bytes(item.photo, item.variant)
    pixels, _, _ = decode_image(data, (size, size))
    return pixels


def encode_corpus(corpus: Corpus, encoder_name: str, cache: Path, batch: int = 64) -> np.ndarray:
    """``(N, dim)`` unit embeddings of every item, from ``cache`` when an earlier run made them."""
    from encoders.base import EncoderSpec
    from encoders.registry import create_image_encoder

    path = cache / f"{encoder_name}-{corpus.digest()}.npy"
    if path.is_file():
        return np.load(path)
    encoder = create_image_encoder(EncoderSpec(name=encoder_name, weights="auto"))
    size = encoder.input_size[0]
    out = np.empty((len(corpus.items), encoder.dim), np.float32)
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        for begin in range(0, len(corpus.items), batch):
            chunk = corpus.items[begin : begin + batch]
            pixels = np.stack(list(pool.map(lambda item: _pixels(item, size), chunk)))
            out[begin : begin + len(chunk)] = encoder.encode(pixels)
            if begin // batch % 20 == 0:
                logger.info("%s: %d/%d encoded, %.0f s", encoder_name, begin + len(chunk),
                            len(corpus.items), time.perf_counter() - started)  # fmt: skip
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def encode_ms_per_image(corpus: Corpus, images: int = 512, batch: int = 64) -> float:
    """MobileNetV2's model-only cost per image on this machine now (after a warm-up batch), to
    set the self-join's cost beside the index job's main one, measured under the same load."""
    from encoders.base import EncoderSpec
    from encoders.registry import create_image_encoder

    encoder = create_image_encoder(EncoderSpec(name="mobilenet_v2", weights="auto"))
    pixels = np.stack([_pixels(item, 224) for item in corpus.items[:images]])
    encoder.encode(pixels[:batch])
    started = time.perf_counter()
    for begin in range(0, len(pixels), batch):
        encoder.encode(pixels[begin : begin + batch])
    return 1000 * (time.perf_counter() - started) / len(pixels)


# --- quality: precision and recall of the groups ----------------------------------------------


def _flickr_number(item: Item) -> int:
    return int(item.photo.name.split("_", 1)[0])


def same_burst(a: Item, b: Item) -> bool:
    """Two different photos whose Flickr ids are within 10^6: likely one photographer's burst.

    A heuristic, named so in the report: Flickr ids grow with upload time, and Flickr8k holds
    series of shots of one scene (consecutive ids) that are near-duplicates in all but name.
    """
    return abs(_flickr_number(a) - _flickr_number(b)) < 1_000_000


@dataclasses.dataclass(frozen=True)
class SweepRow:
    threshold: float
    pairs: int
    star_groups: int
    star_precision: float
    star_recall: float
    star_burst_precision: float  # counting pairs of one burst (same_burst) as right
    components_groups: int
    components_precision: float
    components_recall: float


def _burst_precision(corpus: Corpus, groups, num_rows: int) -> float:
    """Star precision with the pairs of two photos of one burst counted as right."""
    labels = groups.labels(num_rows)
    right = wrong = 0
    for representative in np.unique(groups.representative):
        rows = np.flatnonzero(labels == representative)
        for i, a in enumerate(rows):
            for b in rows[i + 1 :]:
                same = corpus.labels[a] == corpus.labels[b]
                if same or same_burst(corpus.items[a], corpus.items[b]):
                    right += 1
                else:
                    wrong += 1
    return right / (right + wrong) if right + wrong else 1.0


def sweep(corpus: Corpus, vectors: np.ndarray, thresholds: Sequence[float]) -> list[SweepRow]:
    """Groups at each threshold, made as the job makes them (exact self-join: < 20k rows)."""
    from index.near_duplicates import group_pairs, neighbour_pairs, pair_precision_recall

    rows = []
    num = len(vectors)
    indices, scores = _exact_neighbours(vectors)
    for threshold in thresholds:
        pairs = neighbour_pairs(np.arange(num), indices, scores, threshold)
        star = group_pairs(num, pairs)
        whole = group_pairs(num, pairs, split_chains=False)
        star_p, star_r = pair_precision_recall(star.labels(num), corpus.labels)
        whole_p, whole_r = pair_precision_recall(whole.labels(num), corpus.labels)
        rows.append(SweepRow(threshold, len(pairs), star.num_groups, star_p, star_r,
                             _burst_precision(corpus, star, num), whole.num_groups, whole_p,
                             whole_r))  # fmt: skip
    return rows


_NEIGHBOUR_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _exact_neighbours(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from index.near_duplicates import NEIGHBOURS
    from index.scann_index import exact_top_k

    key = id(vectors)
    if key not in _NEIGHBOUR_CACHE:
        _NEIGHBOUR_CACHE[key] = exact_top_k(vectors, vectors, NEIGHBOURS)
    return _NEIGHBOUR_CACHE[key]


def variant_scores(corpus: Corpus, vectors: np.ndarray) -> dict[str, np.ndarray]:
    """Cosine of every variant to its original, mirrored and not, and of every image to the
    closest image of another photo."""
    position = {(item.photo.name, item.variant): i for i, item in enumerate(corpus.items)}
    mirrored, plain = [], []
    for i, item in enumerate(corpus.items):
        if item.variant:
            score = float(vectors[i] @ vectors[position[(item.photo.name, 0)]])
            (mirrored if item.variant % 2 else plain).append(score)
    indices, scores = _exact_neighbours(vectors)
    other = np.full(len(vectors), np.nan, np.float32)
    for i in range(len(vectors)):
        different = corpus.labels[indices[i]] != corpus.labels[i]
        if different.any():
            other[i] = scores[i][different][0]
    return {"mirrored": np.array(mirrored), "plain": np.array(plain), "other_photo": other}


def cross_photo_pairs(corpus: Corpus, vectors: np.ndarray, threshold: float) -> list[tuple]:
    """Pairs of different photos (one entry per photo pair) at or above ``threshold``."""
    from index.near_duplicates import neighbour_pairs

    indices, scores = _exact_neighbours(vectors)
    pairs = neighbour_pairs(np.arange(len(vectors)), indices, scores, threshold)
    seen, found = set(), []
    listed = zip(pairs.left.tolist(), pairs.right.tolist(), pairs.score.tolist(), strict=True)
    for a, b, score in sorted(listed, key=lambda p: -p[2]):
        if corpus.labels[a] == corpus.labels[b]:
            continue
        key = tuple(sorted((corpus.items[a].photo.name, corpus.items[b].photo.name)))
        if key not in seen:
            seen.add(key)
            found.append((score, *key, same_burst(corpus.items[a], corpus.items[b])))
    return found


# --- cost: the self-join at scale ---------------------------------------------------------------

# Grown vectors: a real distractor embedding interpolated towards one of its 10 nearest real
# neighbours plus noise along the data's top principal directions (bench_ann.py's recipe), with
# more noise than bench_ann's 0.5: there the copies are meant to overlap, here they stand for
# other photos. At 2.0 a grown vector's closest real embedding has median cosine 0.69 (p99
# 0.78), as a real Flickr8k photo's closest other photo has (0.67, p99 0.79); at 0.5 it would be
# 0.93, a near-duplicate of a real photo.
GROW_NOISE = 2.0
GROW_NEIGHBOURS = 10
NOISE_DIRECTIONS = 256


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def grow(real: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` synthetic unit vectors shaped like ``real`` (see GROW_NOISE)."""
    from index.scann_index import exact_top_k

    rng = np.random.default_rng(seed)
    centred = (real - real.mean(axis=0)).astype(np.float64)
    variance, directions = np.linalg.eigh(centred.T @ centred / len(real))
    top = np.argsort(variance)[::-1][:NOISE_DIRECTIONS]
    basis = (np.sqrt(np.maximum(variance[top], 0.0))[:, None] * directions[:, top].T).astype(
        np.float32
    )
    neighbours, _ = exact_top_k(real, real, GROW_NEIGHBOURS + 1)
    out = np.empty((n, real.shape[1]), np.float32)
    for begin in range(0, n, 20_000):
        size = min(20_000, n - begin)
        anchor = rng.integers(0, len(real), size)
        partner = neighbours[anchor, rng.integers(1, GROW_NEIGHBOURS + 1, size)]
        mix = rng.uniform(0.0, 1.0, (size, 1)).astype(np.float32)
        grown = real[anchor] + mix * (real[partner] - real[anchor])
        grown += GROW_NOISE * (rng.standard_normal((size, len(basis))).astype(np.float32) @ basis)
        # Pooled post-ReLU CNN features are non-negative; keep that shape.
        out[begin : begin + size] = _unit(np.maximum(grown, 0.0))
    return out


def _write_table(folder: Path, vectors: np.ndarray, ids: list[str], files: int = 4) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from index.schema import embedding_table_schema

    table_dir = folder / "table"
    table_dir.mkdir(parents=True)
    schema = embedding_table_schema(vectors.shape[1])
    dim = vectors.shape[1]
    for number, part in enumerate(np.array_split(np.arange(len(ids)), files)):
        count = len(part)
        columns = {
            "image_id": pa.array([ids[i] for i in part], pa.string()),
            "uri": pa.array([f"/bench/{ids[i]}.jpg" for i in part], pa.string()),
            "duplicate_uris": pa.array([[] for _ in part], pa.list_(pa.string())),
            "sha256": pa.array([f"{i:064x}" for i in part], pa.string()),
            "num_bytes": pa.array(np.full(count, 1000, np.int64)),
            "width": pa.array(np.full(count, 224, np.int32)),
            "height": pa.array(np.full(count, 224, np.int32)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors[part].ravel()), dim),
            "encoder": pa.array(["mobilenet_v2/bench"] * count, pa.string()),
            "metadata": pa.array([""] * count, pa.string()),
        }
        table = pa.table(columns).cast(schema)
        pq.write_table(table, table_dir / f"embeddings-{number:05d}-of-{files:05d}.parquet",
                       row_group_size=2048)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ScaleResult:
    rows: int
    real_rows: int
    scann: str
    build_s: float
    search_ms: float  # per image: its NEIGHBOURS nearest over the index (one thread)
    pairs_ms: float  # per image: pairs at or above the threshold
    group_s: float  # grouping every pair (one process)
    beam_s: float  # the whole step, Beam DirectRunner: read the table, load, query, group, write
    pair_recall: float  # of the exact pairs with a real row, those the ANN self-join found
    precision: float
    recall: float
    grown_pairs: int  # pairs with a grown vector (false by construction)
    groups: int
    encode_ms: float  # MobileNetV2 model-only ms per image, measured in the same run


def scale(corpus: Corpus, vectors: np.ndarray, n: int, threshold: float, tmp: Path) -> ScaleResult:
    """The self-join over ``n`` rows: the corpus' real rows plus grown distractors."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from index.build import BuildConfig, build_index
    from index.near_duplicates import (
        NEIGHBOURS,
        group_image_pairs,
        neighbour_pairs,
        pair_precision_recall,
    )
    from index.scann_index import ScannParams, exact_top_k
    from pipelines.near_duplicates import (
        NearDuplicateConfig,
        NeighbourBatch,
        beam_near_duplicates,
        load_index,
        nearest_over_shards,
        pairs_above,
    )

    distractors = vectors[corpus.labels >= corpus.labels[corpus.mirrored].max() + 1]
    grown = grow(distractors, n - len(vectors))
    everything = np.concatenate([vectors, grown])
    ids = [f"r{i:07d}" for i in range(len(everything))]
    _write_table(tmp, everything, ids)
    started = time.perf_counter()
    spec = {"name": "mobilenet_v2", "weights": "auto", "image_size": 224}
    manifest = build_index(str(tmp), BuildConfig("bench", spec, k=10), {})
    build_s = time.perf_counter() - started
    params = ScannParams.from_json(manifest.scann_params)
    logger.info("built %s over %d rows in %.1f s", params.kind, len(ids), build_s)

    index = load_index(str(tmp), manifest)
    chunk, search_s, pairs_s, found = 256, 0.0, 0.0, []
    for begin in range(0, len(ids), chunk):
        started = time.perf_counter()
        neighbours, scores = nearest_over_shards(index, everything[begin : begin + chunk],
                                                 NEIGHBOURS)  # fmt: skip
        search_s += time.perf_counter() - started
        started = time.perf_counter()
        batch = NeighbourBatch(ids[begin : begin + chunk], neighbours, scores)
        found.extend(pairs_above(batch, threshold))
        pairs_s += time.perf_counter() - started
    started = time.perf_counter()
    rows = group_image_pairs(found)
    group_s = time.perf_counter() - started
    del index

    # The exact pairs of every real row (real queries against all rows: exact_top_k).
    real = len(vectors)
    indices, scores = exact_top_k(everything, everything[:real], NEIGHBOURS)
    exact = neighbour_pairs(np.arange(real), indices, scores, threshold)
    exact_set = set(zip(exact.left.tolist(), exact.right.tolist(), strict=True))
    found_set = {(int(a[1:]), int(b[1:])) for a, b, _ in found}
    with_real = {p for p in found_set if p[0] < real or p[1] < real}
    pair_recall = len(exact_set & with_real) / len(exact_set) if exact_set else 1.0

    truth = np.concatenate([corpus.labels, corpus.labels.max() + 1 + np.arange(len(grown))])
    predicted = np.full(len(ids), -1, np.int64)
    for row in rows:
        predicted[int(row["image_id"][1:])] = int(row["near_duplicate_group"][1:])
    precision, recall = pair_precision_recall(predicted, truth)
    grown_pairs = sum(1 for a, b in found_set if a >= real or b >= real)

    started = time.perf_counter()
    step = beam_near_duplicates(NearDuplicateConfig(threshold=threshold), PipelineOptions([]))
    _, counts = step(str(tmp), manifest)
    beam_s = time.perf_counter() - started
    if counts["near_duplicate_images"] != len(rows):
        raise SystemExit(f"the Beam step wrote {counts} but the loop found {len(rows)} rows")
    n_rows = len(ids)
    return ScaleResult(
        n_rows, real, params.kind, build_s, 1000 * search_s / n_rows, 1000 * pairs_s / n_rows,
        group_s, beam_s, pair_recall, precision, recall, grown_pairs,
        len({row["near_duplicate_group"] for row in rows}), encode_ms_per_image(corpus),
    )  # fmt: skip


# --- the report ---------------------------------------------------------------------------------


def _quantiles(values: np.ndarray) -> str:
    values = values[~np.isnan(values)]
    return " | ".join(f"{np.quantile(values, q):.3f}" for q in (0.0, 0.01, 0.05, 0.5, 0.95, 0.99))


def report(args, corpus, per_encoder, scaled, started) -> str:
    from index.near_duplicates import DEFAULT_THRESHOLD, NEIGHBOURS, default_threshold

    originals = int(corpus.labels[corpus.mirrored].max()) + 1
    lines = [
        "# Near-duplicate groups (generated by `benchmarks/bench_near_duplicates.py`)",
        "",
        f"Run {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}, "
        f"`{' '.join(['benchmarks/bench_near_duplicates.py', *sys.argv[1:]])}`, "
        f"{time.perf_counter() - started:.0f} s (embeddings cached from an earlier run are "
        f"not re-encoded). Machine: {machine_line()}; load average at the end "
        f"{' / '.join(f'{x:.1f}' for x in __import__('os').getloadavg())} (other processes "
        "share the cores: times are noisy).",
        "",
        f"Corpus: {len(corpus.items):,} images. {originals:,} Flickr8k dev photos, each with "
        f"{args.variants} variants by `benchmarks/variant_corpus.variant_bytes` (crop 88-100% of "
        "each side, mirrored on odd variants, brightness x0.9-1.1, JPEG q90): one true group of "
        f"{args.variants + 1} per photo. Plus every Flickr8k train photo once "
        f"({len(corpus.items) - originals * (args.variants + 1):,} distractors, no variant). "
        "Decoded as the index job decodes, encoded with `encoders.registry`. Groups made as "
        f"the job makes them (`index.near_duplicates`, {NEIGHBOURS} neighbours per row, exact "
        "self-join: below 20k rows the job's ScaNN index is brute force). Pairwise precision "
        "and recall over the pairs of images put in one group; 'star' is what the job writes "
        "(every member within the threshold of its representative), 'components' is plain "
        "union-find without the chaining guard. 'burst P' counts a pair of two different "
        "photos whose Flickr ids lie within 10^6 of each other (one photographer's series "
        "of shots, see below) as right.",
    ]
    for name, (sweep_rows, scores, cross) in per_encoder.items():
        chosen = default_threshold(name)
        lines += [
            "",
            f"## {name}",
            "",
            "Cosine to the original (min | p1 | p5 | median | p95 | p99):",
            "",
            "| variants | min | p1 | p5 | median | p95 | p99 |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| plain (crop, brightness) | {_quantiles(scores['plain'])} |",
            f"| mirrored (+ crop, brightness) | {_quantiles(scores['mirrored'])} |",
            f"| closest image of another photo | {_quantiles(scores['other_photo'])} |",
            "",
            "| threshold | pairs | star groups | star P | star R | star burst P | components "
            "groups | components P | components R |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sweep_rows:
            bold = "**" if abs(r.threshold - chosen) < 1e-9 else ""
            lines.append(
                f"| {bold}{r.threshold:.3f}{bold} | {r.pairs:,} | {r.star_groups:,} | "
                f"{r.star_precision:.4f} | {r.star_recall:.4f} | {r.star_burst_precision:.4f} | "
                f"{r.components_groups:,} | {r.components_precision:.4f} | "
                f"{r.components_recall:.4f} |"
            )
        bursts = sum(1 for c in cross if c[3])
        lines += [
            "",
            f"Pairs of different photos at cosine >= {chosen} (this encoder's default, in bold "
            "above; one line per photo "
            f"pair): {len(cross)}, {bursts} of them within one burst by the id heuristic. "
            "The highest:",
            "",
            "| cosine | photo | photo | same burst? |",
            "|---:|---|---|---|",
            *(f"| {s:.3f} | {a} | {b} | {'yes' if burst else 'no'} |" for s, a, b, burst in
              cross[:15]),
        ]  # fmt: skip
    lines += [
        "",
        "## Reading",
        "",
        "- Mirrors: plain MobileNetV2 is not mirror-invariant (a mirrored variant scores ~0.02 "
        "lower than a plain one, its p1 ~0.82), so its threshold must stay below ~0.83 to keep "
        "them; mobilenet_v2_flip scores mirrored and plain variants alike, but every pair of "
        "different photos scores higher too, so it needs a higher threshold for the same "
        "precision (at 0.800 its precision falls below 0.98). Hence one default per encoder "
        "(`index.near_duplicates.MEASURED_THRESHOLDS`), each the sweep's point with both "
        "precision and recall >= 0.998; `--near_duplicate_threshold` overrides it.",
        "- The chaining guard: at the defaults the stars and the plain components nearly "
        "coincide (pairs of different photos are few); below them components chain thousands "
        "of photos into a few groups while stars keep precision (at 0.750 for mobilenet_v2: "
        "see the table), at a small recall cost where a variant's only pair is with another "
        "variant rather than the representative.",
        "- Flickr8k's own near-duplicates, judged by eye on the pairs listed above (run of "
        "2026-12-02): 2851198725_37b6027625 and 3050606344_af711c726c are one photo stored "
        "twice (cosine 1.000: a true duplicate Flickr8k carries under two names); the 'same "
        "burst' pairs are shots of one scene seconds apart by one photographer (the woman in "
        "the hall, the rafting team, the girl in the knitted hat, the church door, ...): near-"
        "duplicates for a user, false by the construction of this benchmark; "
        "476760133_c33d2bd83d and 509200598_171a1ab6c8 are two different black dogs on grass "
        "(0.826 with mobilenet_v2, under mobilenet_v2_flip's default): a real false positive. "
        "So the strict precision above counts at least 10 of its 11 mobilenet_v2 'errors' "
        "at the default wrongly.",
    ]
    if scaled is not None:
        s = scaled
        lines += [
            "",
            f"## Cost at {s.rows:,} rows (default encoder, threshold {DEFAULT_THRESHOLD})",
            "",
            f"The {s.real_rows:,} real rows above plus {s.rows - s.real_rows:,} grown ones "
            f"(a real distractor interpolated towards one of its {GROW_NEIGHBOURS} nearest real "
            f"neighbours, plus noise {GROW_NOISE} x the data's spread along its top "
            f"{NOISE_DIRECTIONS} principal directions, clipped at 0 and renormalised: a grown "
            "vector's closest real one has median cosine ~0.69, as a real photo's closest "
            "other photo has 0.67), 1280-d float32, written as an embedding table (4 Parquet "
            "files). Encoding 100k photos at this run's rate would take "
            f"~{s.encode_ms * s.rows / 60_000:.0f} min of MobileNetV2; the self-join's cost "
            "does not depend on where the vectors came from. The index is "
            f"built by `index.build.build_index` (the job's size rules: {s.scann} at this size); "
            "then every row is queried for its nearest neighbours through the job's own "
            "functions (`pipelines.near_duplicates.nearest_over_shards`, `pairs_above`, "
            "`index.near_duplicates.group_image_pairs`), one thread, and the whole step runs as "
            "the index job runs it (`beam_near_duplicates`, DirectRunner in-process: read the "
            "table, load the index, query, group, write).",
            "",
            "| rows | ScaNN | index build s | search ms/image | pairs ms/image | grouping s | "
            "whole step (Beam) s | step ms/image |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
            f"| {s.rows:,} | {s.scann} | {s.build_s:.1f} | {s.search_ms:.3f} | {s.pairs_ms:.4f} "
            f"| {s.group_s:.2f} | {s.beam_s:.1f} | {1000 * s.beam_s / s.rows:.2f} |",
            "",
            f"For scale: MobileNetV2 cost {s.encode_ms:.2f} ms per image in this run (model "
            "only, float32, batches of 64, same cores, same load), so the whole step adds "
            f"{s.beam_s * 1000 / s.rows / s.encode_ms:.3f}x the encoding cost per image. (On "
            "2026-12-02 05:23 `benchmarks/results/encode.md` measured 7.1 ms per image on this "
            "host type, and `benchmarks/results/incremental.md` 5.5-5.9 ms per image for a "
            "whole full run: when TensorFlow runs that fast the step is "
            f"~{100 * s.beam_s * 1000 / s.rows / 5.9:.0f}% of a full build.) An in-place upsert "
            "of +1% took 28.0 s at 100k (`incremental.md`): recomputing the groups over every "
            f"row ({s.beam_s:.0f} s here) would about triple it, which is why an in-place "
            "upsert joins only its changed rows and the members of the groups they touch "
            "(`index.near_duplicates.carry_over`).",
            "",
            f"Quality at this size: the approximate self-join found {s.pair_recall:.4f} of the "
            "exact pairs of the real rows (exact: every real row against all rows); groups "
            f"pairwise precision {s.precision:.4f}, recall {s.recall:.4f} (grown rows are "
            f"singletons in the truth), {s.groups:,} groups; {s.grown_pairs} pairs involve a "
            "grown vector (synthetic, so false by construction).",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--originals", type=int, default=1000, help="dev photos given variants")
    parser.add_argument("--variants", type=int, default=4, help="variants per photo")
    parser.add_argument("--encoders", nargs="+", default=["mobilenet_v2", "mobilenet_v2_flip"])
    parser.add_argument("--scale", type=int, default=100_000, help="rows of the cost run (0: skip)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/imgsearch-near-duplicates"))
    parser.add_argument("--report", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("apache_beam", "absl", "index", "pipelines"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from index.near_duplicates import DEFAULT_THRESHOLD, MEASURED_THRESHOLDS, default_threshold

    started = time.perf_counter()
    print(machine_line())
    corpus = build_corpus(args.originals, args.variants)
    thresholds = [round(t, 3) for t in np.arange(0.70, 0.951, 0.025)]
    thresholds = sorted({*thresholds, *MEASURED_THRESHOLDS.values()})
    per_encoder = {}
    vectors_of = {}
    for name in args.encoders:
        vectors = encode_corpus(corpus, name, args.cache)
        vectors_of[name] = vectors
        rows = sweep(corpus, vectors, thresholds)
        scores = variant_scores(corpus, vectors)
        cross = cross_photo_pairs(corpus, vectors, default_threshold(name))
        per_encoder[name] = (rows, scores, cross)
        for r in rows:
            print(f"{name} t={r.threshold:.3f} pairs={r.pairs} star P={r.star_precision:.4f} "
                  f"R={r.star_recall:.4f} burstP={r.star_burst_precision:.4f} components "
                  f"P={r.components_precision:.4f} R={r.components_recall:.4f}")  # fmt: skip
    scaled = None
    if args.scale:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="bench-near-dupes-") as tmp:
            scaled = scale(corpus, vectors_of[args.encoders[0]], args.scale, DEFAULT_THRESHOLD,
                           Path(tmp))  # fmt: skip
        print(scaled)
    text = report(args, corpus, per_encoder, scaled, started)
    args.report.write_text(text)
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
