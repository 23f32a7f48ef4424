"""Issue 16's trained-text-tower lever: MiniLM's top layers fine-tuned inside the dual encoder.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/text_tower.py [--layers 0 1 2] [--epochs 8]``
(writes ``benchmarks/results/text_tower.md`` and a JSON of the figures beside it).

The default recipe feeds the towers *frozen* MiniLM sentence vectors (beside TF-IDF): whatever
MiniLM's paraphrase training put in the vector is all the text side has. Here the text side is
``MiniLM layers 6-K.. (trainable) -> mean pool -> [ | TF-IDF] -> linear tower`` and the image side
a linear tower on frozen mirror-averaged MobileNetV2 features, trained together by symmetric
InfoNCE (learnt temperature) on Flickr8k train, one random caption per photo per step. K = 0 is
the same dual encoder on the frozen vectors, so each row differs from it by the trained layers
alone. The frozen bottom's token states are computed once (``encoders.minilm.build_bert_top``
runs the top on them), so an epoch costs the top K layers, not the whole network.

Reported on the 1,000 dev photos and their 5,000 captions after the last epoch (no epoch picked
on dev): text->image R@1/5/10, image->text R@1, and seconds per epoch. The CNN is frozen here
so the lever's figure does not hide inside the CNN's; the default recipe fine-tunes both.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.datasets import add_flickr8k_arg, flickr8k_dir
from benchmarks.machine import machine_line
from encoders.base import EncoderSpec
from encoders.bow import TfidfEncoder
from encoders.imaging import decode_image
from encoders.keras_image import KerasImageEncoder
from encoders.minilm import MiniLMEncoder, build_bert_top, copy_weights_by_name, length_chunks
from ranking.metrics import image_to_text_ranks, retrieval_metrics, text_to_image_ranks
from training.captions import load_captioned_dataset
from training.joint_losses import contrastive_losses
from training.joint_model import _build_tower

RESULTS = REPO / "benchmarks" / "results" / "text_tower.md"


class Split:
    """One split's captions and photos as the trainer needs them (numpy, computed once)."""

    def __init__(self, dataset, encoder: MiniLMEncoder, image_encoder, taps, tfidf) -> None:
        import keras
        import tensorflow as tf

        texts = dataset.caption_texts
        self.caption_images = dataset.caption_image_index()
        self.tfidf = tfidf.encode(texts)
        outputs = {
            str(t): encoder.model.get_layer(f"encoder.layer.{t}.output.LayerNorm").output
            for t in taps
        }
        # The frozen sentence vector from the same pass (the encoder's own pooling).
        outputs["sentence"] = encoder.model.output["sentence_embedding"]
        bottom = keras.Model(encoder.model.inputs, outputs)
        ids_spec = tf.TensorSpec([None, None], tf.int32)
        run = tf.function(  # one trace for every chunk shape
            lambda ids, mask: bottom([ids, mask], training=False),
            input_signature=[ids_spec, ids_spec],
        )
        self.lengths = np.zeros(len(texts), dtype=np.int64)
        per_text: dict[str, list] = {str(t): [None] * len(texts) for t in taps}
        self.minilm = np.zeros((len(texts), encoder.dim), dtype=np.float32)
        for chunk in length_chunks([len(text) for text in texts]):
            ids, mask = encoder.tokenize([texts[i] for i in chunk])
            result = run(ids, mask)
            count = mask.sum(axis=1)
            self.lengths[chunk] = count
            for tap in per_text:
                states = result[tap].numpy()
                for row, position in enumerate(chunk):
                    per_text[tap][position] = states[row, : count[row]].astype(np.float16)
            self.minilm[chunk] = result["sentence"].numpy()
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.states = {tap: np.concatenate(rows) for tap, rows in per_text.items()}
        pixels = []
        features = []
        for _, uri in dataset.images:
            pixels.append(decode_image(Path(uri).read_bytes())[0])
            if len(pixels) == 128:
                features.append(image_encoder.encode(np.stack(pixels)))
                pixels = []
        if pixels:
            features.append(image_encoder.encode(np.stack(pixels)))
        self.images = np.concatenate(features)

    def padded(self, tap: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cached states of captions ``rows`` padded to the longest -> (states, mask)."""
        longest = int(self.lengths[rows].max())
        hidden = self.states[tap].shape[1]
        states = np.zeros((len(rows), longest, hidden), np.float32)
        mask = np.zeros((len(rows), longest), np.int32)
        for i, row in enumerate(rows):
            n = self.lengths[row]
            states[i, :n] = self.states[tap][self.offsets[row] : self.offsets[row] + n]
            mask[i, :n] = 1
        return states, mask


def train(encoder, train_split: Split, dev: Split, layers: int, args) -> dict:
    """One dual encoder with MiniLM's top ``layers`` trainable (0: frozen vectors)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    first = encoder.config.num_hidden_layers - layers
    tap = str(first - 1)
    top = None
    if layers:
        top = build_bert_top(encoder.config, first)
        copy_weights_by_name(encoder.model, top)
    text_dim = encoder.dim + train_split.tfidf.shape[1]
    text_tower = _build_tower("text_tower", text_dim, (), args.dim, "relu", 0.2, args.seed)
    image_dim = train_split.images.shape[1]
    image_tower = _build_tower("image_tower", image_dim, (), args.dim, "relu", 0.2, args.seed + 1)
    log_scale = keras.Variable(math.log(1 / 0.07), name="log_logit_scale")
    steps = len(train_split.images) // args.batch_size
    total = steps * args.epochs

    def optimizer(rate, variables):
        opt = keras.optimizers.AdamW(
            learning_rate=keras.optimizers.schedules.CosineDecay(rate, total), weight_decay=0.05
        )
        opt.exclude_from_weight_decay(var_list=[v for v in variables if len(v.shape) < 2])
        opt.build(variables)
        return opt

    tower_vars = [*text_tower.trainable_variables, *image_tower.trainable_variables, log_scale]
    bert_vars = list(top.trainable_variables) if top is not None else []
    tower_opt = optimizer(args.learning_rate, tower_vars)
    bert_opt = optimizer(args.bert_learning_rate, bert_vars) if bert_vars else None

    def sentence(states, mask, frozen, training):
        if top is None:
            return frozen
        return top([states, mask], training=training)["sentence_embedding"]

    @tf.function(reduce_retracing=True)
    def step(states, mask, frozen, tfidf, image_rows, images):
        with tf.GradientTape() as tape:
            text = tf.concat([sentence(states, mask, frozen, True), tfidf], axis=1)
            text = tf.math.l2_normalize(text, axis=1)
            text_emb = tf.math.l2_normalize(text_tower(text, training=True), axis=1)
            image_emb = tf.math.l2_normalize(image_tower(images, training=True), axis=1)
            loss = contrastive_losses(text_emb, image_emb, image_rows, tf.exp(log_scale))
        gradients = tape.gradient(loss, tower_vars + bert_vars)
        tower_opt.apply_gradients(zip(gradients[: len(tower_vars)], tower_vars, strict=True))
        if bert_opt is not None:
            bert_opt.apply_gradients(zip(gradients[len(tower_vars) :], bert_vars, strict=True))
        log_scale.assign(tf.clip_by_value(log_scale, 0.0, math.log(100.0)))
        return loss

    def dev_figures() -> dict:
        parts = []
        for start in range(0, len(dev.lengths), 256):
            rows = np.arange(start, min(start + 256, len(dev.lengths)))
            if top is None:
                vectors = dev.minilm[rows]
            else:
                states, mask = dev.padded(tap, rows)
                vectors = top([states, mask], training=False)["sentence_embedding"].numpy()
            text = np.concatenate([vectors, dev.tfidf[rows]], axis=1)
            text /= np.linalg.norm(text, axis=1, keepdims=True)
            parts.append(text_tower(text, training=False).numpy())
        text_emb = np.concatenate(parts)
        text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
        image_emb = image_tower(dev.images, training=False).numpy()
        image_emb /= np.linalg.norm(image_emb, axis=1, keepdims=True)
        t2i = retrieval_metrics(text_to_image_ranks(text_emb, image_emb, dev.caption_images))
        i2t = retrieval_metrics(image_to_text_ranks(image_emb, text_emb, dev.caption_images))
        return {
            "t2i": {k: t2i[k] for k in ("R@1", "R@5", "R@10")},
            "i2t": {k: i2t[k] for k in ("R@1", "R@5", "R@10")},
        }

    captions_of: list[list[int]] = [[] for _ in range(len(train_split.images))]
    for caption, image in enumerate(train_split.caption_images):
        captions_of[image].append(caption)
    rng = np.random.default_rng(args.seed)
    no_states = (np.zeros((1, 1, encoder.dim), np.float32), np.zeros((1, 1), np.int32))
    started = time.monotonic()
    epochs = []
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(train_split.images))
        losses = []
        for index in range(steps):
            images = order[index * args.batch_size : (index + 1) * args.batch_size]
            rows = np.array([rng.choice(captions_of[i]) for i in images])
            states, mask = train_split.padded(tap, rows) if top is not None else no_states
            losses.append(
                float(
                    step(
                        tf.constant(states), tf.constant(mask),
                        tf.constant(train_split.minilm[rows]), tf.constant(train_split.tfidf[rows]),
                        tf.constant(images), tf.constant(train_split.images[images]),
                    )
                )
            )  # fmt: skip
        figures = dev_figures()
        epochs.append({"epoch": epoch, "loss": float(np.mean(losses)), **figures})
        print(
            f"layers {layers} epoch {epoch}/{args.epochs}: loss {np.mean(losses):.3f}, dev "
            f"t2i R@1 {figures['t2i']['R@1']:.3f} R@10 {figures['t2i']['R@10']:.3f}, "
            f"{time.monotonic() - started:.0f} s",
            flush=True,
        )
    return {
        "layers": layers,
        "seconds_per_epoch": (time.monotonic() - started) / args.epochs,
        "final": epochs[-1],
        "epochs": epochs,
    }


def render(results: list[dict], args, cache_seconds: float) -> str:
    base = results[0]["final"]["t2i"]["R@1"] if results[0]["layers"] == 0 else None
    lines = [
        "# A trained text tower: MiniLM's top layers fine-tuned in the dual encoder",
        "",
        f"`{' '.join(sys.argv)}` · {machine_line()}",
        "",
        "Flickr8k train (6,091 photos, one random caption of five per photo per step), frozen "
        "`mobilenet_v2_flip` image features, text side MiniLM (top K layers trainable on cached "
        "states) + TF-IDF, linear towers to "
        f"{args.dim}-d, InfoNCE, batch {args.batch_size}, {args.epochs} epochs, tower rate "
        f"{args.learning_rate}, MiniLM rate {args.bert_learning_rate} (cosine decay). Dev: "
        "1,000 photos, 5,000 captions, figures after the last epoch.",
        "",
        "| MiniLM layers trained | t2i R@1 | R@5 | R@10 | i2t R@1 | R@5 | R@10 | s/epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        t2i, i2t = result["final"]["t2i"], result["final"]["i2t"]
        gain = "" if base is None or not result["layers"] else f" ({t2i['R@1'] - base:+.3f})"
        lines.append(
            f"| {result['layers']} | {t2i['R@1']:.3f}{gain} | {t2i['R@5']:.3f} | "
            f"{t2i['R@10']:.3f} | {i2t['R@1']:.3f} | {i2t['R@5']:.3f} | {i2t['R@10']:.3f} | "
            f"{result['seconds_per_epoch']:.0f} |"
        )
    lines += [
        "",
        f"Caching MiniLM's bottom states and the image features took {cache_seconds:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flickr8k_arg(parser)
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--bert-learning-rate", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    dataset_dir = flickr8k_dir(parser, args)
    started = time.monotonic()
    train_set = load_captioned_dataset(dataset_dir, "train")
    dev_set = load_captioned_dataset(dataset_dir, "dev")
    encoder = MiniLMEncoder("auto")
    image_encoder = KerasImageEncoder(EncoderSpec(name="mobilenet_v2_flip"))
    tfidf = TfidfEncoder.fit(train_set.caption_texts, min_count=2)
    taps = sorted({encoder.config.num_hidden_layers - 1 - k for k in args.layers if k})
    train_split = Split(train_set, encoder, image_encoder, taps, tfidf)
    dev = Split(dev_set, encoder, image_encoder, taps, tfidf)
    cache_seconds = time.monotonic() - started
    print(f"cached states and features in {cache_seconds:.0f} s", flush=True)
    results = [train(encoder, train_split, dev, k, args) for k in sorted(args.layers)]
    text = render(results, args, cache_seconds)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
