"""``OUT/report.html``: one self-contained page (opens offline) that people read.

Everything is inline: matplotlib figures as base64 PNG, thumbnails as base64 JPEG, CSS in the
page. Sections: headline tables (text->image, image->text, ANN vs exact, latency), plots
(Recall@K curves per method, rank histograms), a gallery of example queries of the primary
method with their top results (the correct image outlined in green) including the worst
failures, and the exact models, encoders, dataset and command behind the figures.
"""

from __future__ import annotations

import base64
import functools
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np

from storage.files import read_bytes

if TYPE_CHECKING:
    from evaluation.eval_types import EvalConfig, MethodResult
    from training.captions import CaptionedDataset

THUMBNAIL_PX = 112
GALLERY_TOP = 5

# Autoescaping: captions and file names are user data.
_TEMPLATE = jinja2.Environment(autoescape=True).from_string(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>imgsearch eval: {{ dataset.path | e }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
.query { margin: 1em 0; padding: 0.5em; border-top: 1px solid #ddd; }
.thumbs { display: flex; gap: 6px; align-items: flex-end; flex-wrap: wrap; }
figure { margin: 0; text-align: center; font-size: 12px; }
figure img { border: 4px solid transparent; display: block; }
figure.correct img { border-color: #1a9e1a; }
figure.answer { margin-left: 1.5em; }
.fail { color: #b00; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
</style></head><body>
<h1>Retrieval evaluation</h1>
<p>Dataset <code>{{ dataset.path | e }}</code> ({{ dataset.layout }}, split
{{ dataset.split or 'none: every image' }}): <b>{{ images }}</b> images,
<b>{{ queries }}</b> caption queries.
Ranks are 1-based; ties count pessimistically (an other item scoring equal to the correct one
is ranked above it).</p>

<h2>Text &rarr; image</h2>
<table id="text-to-image"><tr><th>method</th>
{% for k in t2i_keys %}<th>{{ k }}</th>{% endfor %}</tr>
{% for name, m in methods.items() %}<tr><td>{{ name | e }}</td>
{% for k in t2i_keys %}<td>{{ fmt(m.text_to_image[k], k) }}</td>{% endfor %}</tr>{% endfor %}
</table>

<h2>Image &rarr; text</h2>
<table id="image-to-text"><tr><th>method</th>
{% for k in i2t_keys %}<th>{{ k }}</th>{% endfor %}</tr>
{% for name, m in methods.items() %}<tr><td>{{ name | e }}</td>
{% for k in i2t_keys %}<td>{{ fmt(m.image_to_text[k], k) }}</td>{% endfor %}</tr>{% endfor %}
</table>

<h2>Approximate (ScaNN) vs exact search</h2>
<table id="ann"><tr><th>method</th><th>index</th><th>recall@10 vs brute force</th>
<th>R@1 exact</th><th>R@1 ANN</th><th>R@10 exact</th><th>R@10 ANN</th><th>&Delta; R@10</th></tr>
{% for name, a in ann.text_to_image.items() %}<tr><td>{{ name | e }}</td><td>{{ a.index }}</td>
<td>{{ fmt(a['recall@10']) }}</td><td>{{ fmt(a.exact['R@1']) }}</td>
<td>{{ fmt(a.approximate['R@1']) }}</td><td>{{ fmt(a.exact['R@10']) }}</td>
<td>{{ fmt(a.approximate['R@10']) }}</td><td>{{ '%+.4f' % a.delta['R@10'] }}</td></tr>{% endfor %}
<tr><td>image &rarr; image</td><td>{{ ann.image_to_image.index }}</td>
<td>{{ fmt(ann.image_to_image['recall@10']) }}</td><td colspan="5"></td></tr>
</table>

<h2>Query latency (single queries: text encoding + search, ms)</h2>
<table id="latency"><tr><th>method</th><th>search</th><th>p50</th><th>p90</th><th>p99</th>
<th>queries</th></tr>
{% for name, l in latency.items() %}<tr><td>{{ name | e }}</td><td>{{ l.search }}</td>
<td>{{ '%.2f' % l.p50 }}</td><td>{{ '%.2f' % l.p90 }}</td><td>{{ '%.2f' % l.p99 }}</td>
<td>{{ l.queries }}</td></tr>{% endfor %}
</table>

{% if captioning %}
<h2>Captions ({{ captioning.captioner | e }}, {{ captioning.images }} images)</h2>
<table id="captioning"><tr><th>BLEU-1</th><th>BLEU-2</th><th>BLEU-3</th><th>BLEU-4</th>
<th>METEOR</th><th>CIDEr</th></tr><tr>{% for key in ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4",
"METEOR", "CIDEr"] %}<td>{{ '%.3f' % captioning[key] if captioning[key] is not none
else 'missing' }}</td>{% endfor %}</tr></table>
{% for part, why in (captioning.missing or {}).items() %}
<p class="fail">{{ part }}: {{ why | e }}</p>{% endfor %}
<div class="thumbs">{% for c in caption_gallery %}<figure class="caption-example">
<img alt="{{ c.image | e }}" src="data:image/jpeg;base64,{{ c.data }}"><figcaption>
<b>{{ c.generated | e }}</b>{% for h in c.human %}<br>{{ h | e }}{% endfor %}</figcaption>
</figure>{% endfor %}</div>{% endif %}

<h2>Plots</h2>
<img class="plot" alt="Recall@K curves" src="data:image/png;base64,{{ recall_png }}">
<img class="plot" alt="rank histograms" src="data:image/png;base64,{{ hist_png }}">

<h2>Examples ({{ primary | e }})</h2>
<p>Top {{ gallery_top }} results per query; the correct image is outlined in green. When it is
not among them it is shown on the right with its rank.</p>
{% for section, items in gallery %}<h3>{{ section }}</h3>
{% for q in items %}<div class="query"><div>&ldquo;{{ q.caption | e }}&rdquo;
&mdash; correct image at rank
<b class="{{ 'fail' if q.rank > gallery_top else '' }}">{{ q.rank }}</b></div>
<div class="thumbs">{% for t in q.top %}<figure class="{{ 'correct' if t.correct else '' }}">
<img alt="{{ t.name | e }}" src="data:image/jpeg;base64,{{ t.data }}"><figcaption>{{ loop.index }}.
{{ t.name | e }}</figcaption></figure>{% endfor %}
{% if q.answer %}<figure class="correct answer"><img alt="{{ q.answer.name | e }}"
src="data:image/jpeg;base64,{{ q.answer.data }}"><figcaption>correct: {{ q.answer.name | e }}
(rank {{ q.rank }})</figcaption></figure>{% endif %}</div></div>{% endfor %}{% endfor %}

<h2>Provenance</h2>
<table id="provenance">
<tr><td>command</td><td style="text-align:left"><code>{{ provenance.command | e }}</code></td></tr>
<tr><td>code</td><td style="text-align:left">{{ provenance.code_version | e }}</td></tr>
<tr><td>created</td><td style="text-align:left">{{ provenance.created_at }}</td></tr>
<tr><td>image encoder</td><td style="text-align:left">{{ index.encoder_id | e }}</td></tr>
<tr><td>index</td><td style="text-align:left">{{ index.dir | e }} (version {{ index.version }},
joint shard {{ index.joint_model or 'none' }})</td></tr>
</table>
<h3>Methods</h3>
<pre>{{ descriptions | e }}</pre>
<p>Full figures: <code>metrics.json</code> (schema version {{ schema_version }}); competition
submission of {{ primary | e }}: <code>submission.csv</code>.</p>
</body></html>
"""
)


def _fmt(value: Any, key: str = "") -> str:
    """Fractions with 4 decimals, ranks with 1, counts as integers."""
    if isinstance(value, int):
        return str(value)
    if key.endswith("_rank"):
        return f"{value:.1f}"
    return f"{value:.4f}"


def _png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def recall_curve_png(results: Sequence[MethodResult], num_images: int) -> str:
    """Recall@K for K = 1..num_images (log axis), text->image solid, image->text dashed."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on workers and CI
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    ks = np.unique(np.geomspace(1, max(num_images, 2), 60).astype(int))
    for result in results:
        name = result.method.name
        t2i = [(result.t2i_ranks <= k).mean() for k in ks]
        line = axis.plot(ks, t2i, label=f"{name} text→image")[0]
        i2t = [(result.i2t_ranks <= k).mean() for k in ks]
        axis.plot(ks, i2t, "--", color=line.get_color(), label=f"{name} image→text")
    axis.plot(ks, np.minimum(ks / num_images, 1.0), ":", color="grey", label="chance (t→i)")
    axis.set(xscale="log", xlabel="K", ylabel="Recall@K", ylim=(0, 1.02), title="Recall@K")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _png(figure)


def rank_histogram_png(results: Sequence[MethodResult], num_images: int) -> str:
    """Histogram of the correct image's text->image rank per method (log-spaced bins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    bins = np.unique(np.geomspace(1, num_images + 1, 25).astype(int))
    for result in results:
        axis.hist(result.t2i_ranks, bins=bins, histtype="step", label=result.method.name)
    axis.set(xscale="log", xlabel="rank of the correct image", ylabel="queries")
    axis.set_title("text→image rank histogram (log-spaced bins)")
    axis.legend(fontsize=8)
    return _png(figure)


@functools.lru_cache(maxsize=512)
def thumbnail(uri: str, size: int = THUMBNAIL_PX) -> str:
    """A base64 JPEG thumbnail of the image at ``uri`` (EXIF orientation applied)."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(Image.open(io.BytesIO(read_bytes(uri))))
    image = image.convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def gallery_queries(ranks: np.ndarray, examples: int, failures: int) -> tuple[list, list]:
    """Caption rows to show: evenly spread examples, and the worst-ranked (ties by row)."""
    spread = np.linspace(0, len(ranks) - 1, num=min(examples, len(ranks))).astype(int)
    worst = np.lexsort((np.arange(len(ranks)), -ranks))[:failures]
    return [int(r) for r in spread], [int(r) for r in worst]


def _gallery_item(dataset: CaptionedDataset, result: MethodResult, row: int) -> dict[str, Any]:
    image_name, caption = dataset.captions[row]
    uris = dict(dataset.images)
    top = []
    for image_row in result.top_rows[row][:GALLERY_TOP]:
        name = dataset.images[int(image_row)][0]
        top.append({"name": name, "data": thumbnail(uris[name]), "correct": name == image_name})
    rank = int(result.t2i_ranks[row])
    answer = None
    if not any(t["correct"] for t in top):
        answer = {"name": image_name, "data": thumbnail(uris[image_name])}
    return {"caption": caption, "rank": rank, "top": top, "answer": answer}


def render_report(
    metrics: dict[str, Any],
    dataset: CaptionedDataset,
    results: Sequence[MethodResult],
    gallery_examples: int = 6,
    gallery_failures: int = 4,
) -> str:
    """The report's HTML (see the module docstring)."""
    primary = results[0]
    spread, worst = gallery_queries(primary.t2i_ranks, gallery_examples, gallery_failures)
    gallery = [
        ("Sample queries", [_gallery_item(dataset, primary, row) for row in spread]),
        ("Worst failures", [_gallery_item(dataset, primary, row) for row in worst]),
    ]
    uris = dict(dataset.images)
    captioning = metrics.get("captioning")
    caption_gallery = [
        {**example, "data": thumbnail(uris[example["image"]])}
        for example in (captioning or {}).get("examples", [])
    ]
    first = next(iter(metrics["methods"].values()))
    descriptions = {name: m["description"] for name, m in metrics["methods"].items()}
    return _TEMPLATE.render(
        **metrics,
        fmt=_fmt,
        primary=primary.method.name,
        t2i_keys=[k for k in first["text_to_image"]],
        i2t_keys=[k for k in first["image_to_text"]],
        recall_png=recall_curve_png(results, len(dataset.images)),
        hist_png=rank_histogram_png(results, len(dataset.images)),
        gallery=gallery,
        gallery_top=GALLERY_TOP,
        caption_gallery=caption_gallery,
        latency=metrics["latency_ms"],
        descriptions=json.dumps(descriptions, indent=2, default=str),
    )


def write_report(
    path: str | Path,
    metrics: dict[str, Any],
    dataset: CaptionedDataset,
    results: Sequence[MethodResult],
    config: EvalConfig,
) -> Path:
    path = Path(path)
    page = render_report(metrics, dataset, results, config.gallery_queries, config.gallery_failures)
    path.write_text(page, encoding="utf-8")
    return path
