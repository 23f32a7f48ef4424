"""``imgsearch train hashing``: binary codes for an embedding table (semantic hashing).

    imgsearch train hashing --table DIR --bits 64|128|256 --out MODELS_DIR
        [--method autoencoder|itq] [--epochs 10] [--rerank 100]

Reads the table (``DIR/*.parquet``, or an index output's ``DIR/table``), holds out
``--eval-queries`` rows as evaluation queries and ``--selection-queries`` more to choose the
autoencoder's epoch, fits ITQ (the baseline) and, unless ``--method itq``, the autoencoder on
the rest (a sample of ``--train-rows`` of them on a large table), and scores both the way
search uses them: Hamming top R over the packed codes of every remaining row, exact re-ranking
with the float embeddings, recall@10 against exact float search, for each R in ``--rerank``.
The ``--method`` encoder is saved as a new version of ``--name`` (default ``hashing-<bits>``,
kind ``hashing``) with both methods' figures in its metadata.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index.hamming import HashEncoder
from index.scann_index import exact_top_k
from index.table import TABLE_DIR, parquet_files, read_embedding_table
from models.artifacts import save_hashing_model
from runtime.arguments import command_parser, show_defaults
from storage.files import join_path
from training.hashing import (
    METHODS,
    AutoencoderTraining,
    code_recall,
    pca_projection,
    quantization_error,
    train_autoencoder,
    train_itq,
)

logger = logging.getLogger(__name__)

BITS = (64, 128, 256)

K = 10


@dataclasses.dataclass(frozen=True)
class TrainHashingConfig:
    table: str
    out: str
    bits: int = 64
    method: str = "autoencoder"
    name: str = ""  # default hashing-<bits>
    eval_queries: int = 500
    selection_queries: int = 300
    rerank: tuple[int, ...] = (100, 1000)
    train_rows: int = 50_000  # fit on at most this many database rows (a seeded sample)
    training: AutoencoderTraining = dataclasses.field(default_factory=AutoencoderTraining)

    @property
    def model_name(self) -> str:
        return self.name or f"hashing-{self.bits}"


def parse_args(argv: Sequence[str]) -> TrainHashingConfig:
    parser = command_parser(
        "imgsearch train hashing",
        "Train binary codes (semantic hashing) for an embedding table: ITQ as the baseline and "
        "a binary-bottleneck autoencoder, both scored as Hamming top R + exact re-ranking; the "
        "chosen one is saved as a 'hashing' model in the models directory.",
        [
            "imgsearch train hashing --table out/table --bits 64 --out models",
            "imgsearch train hashing --table out --bits 128 --method itq --out models",
        ],
    )
    parser.add_argument("--table", required=True, help="embedding-table folder or index output")
    parser.add_argument("--bits", type=int, choices=BITS, default=64)
    parser.add_argument("--out", required=True, help="the models directory")
    parser.add_argument("--method", choices=METHODS, default="autoencoder")
    parser.add_argument("--name", default="", help="model name (default: hashing-<bits>)")
    parser.add_argument("--eval-queries", type=int, default=500)
    parser.add_argument("--selection-queries", type=int, default=300)
    parser.add_argument("--rerank", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--train-rows", type=int, default=50_000, help="fit on a sample")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--encoder-learning-rate", type=float, default=3e-5)
    parser.add_argument("--itq-iterations", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = show_defaults(parser).parse_args(argv)
    if args.train_rows < args.bits:
        parser.error(f"--train-rows must be at least --bits ({args.bits})")
    if args.eval_queries < 1 or args.selection_queries < 0 or min(args.rerank) < K:
        parser.error(f"--eval-queries must be >= 1, --selection-queries >= 0, --rerank >= {K}")
    try:
        training = AutoencoderTraining(
            hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size,
            learning_rate=args.learning_rate, encoder_learning_rate=args.encoder_learning_rate,
            itq_iterations=args.itq_iterations, rerank=args.rerank[0], seed=args.seed,
        )  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    return TrainHashingConfig(
        table=args.table, out=args.out, bits=args.bits, method=args.method, name=args.name,
        eval_queries=args.eval_queries, selection_queries=args.selection_queries,
        rerank=tuple(args.rerank), train_rows=args.train_rows, training=training,
    )  # fmt: skip


def _table_paths(table: str) -> list[str]:
    paths = parquet_files(table)
    if not paths:
        paths = parquet_files(join_path(table, TABLE_DIR))
    if not paths:
        raise ValueError(f"no embedding-table Parquet files in {table} or {table}/{TABLE_DIR}")
    return paths


def split_rows(
    num_rows: int, eval_queries: int, selection_queries: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train, selection, eval)`` row indices (each sorted): a seeded permutation's slices."""
    held_out = eval_queries + selection_queries
    if num_rows - held_out < 2 * K:
        raise ValueError(
            f"the table has {num_rows} rows: too few to hold out {held_out} queries and still "
            f"search {2 * K} or more"
        )
    order = np.random.default_rng(seed).permutation(num_rows)
    evaluation, selection = order[:eval_queries], order[eval_queries:held_out]
    return np.sort(order[held_out:]), np.sort(selection), np.sort(evaluation)


def evaluate(
    encoder: HashEncoder,
    database: np.ndarray,
    queries: np.ndarray,
    exact: np.ndarray,
    rerank: Sequence[int],
) -> dict[str, Any]:
    """Recall@10 (Hamming top R + re-ranking vs exact float) per R, and the code size."""
    return {
        "bytes_per_code": encoder.bytes_per_code,
        **{
            f"recall@{K}_R{r}": round(code_recall(encoder, database, queries, K, r, exact), 4)
            for r in rerank
        },
    }


def run(config: TrainHashingConfig) -> Path:
    """Train, evaluate and save; -> the saved version folder."""
    paths = _table_paths(config.table)
    table = read_embedding_table(paths)
    train_rows, selection_rows, eval_rows = split_rows(
        len(table), config.eval_queries, config.selection_queries, config.training.seed
    )
    x = table.embeddings
    database, queries = x[train_rows], x[eval_rows]
    selection = x[selection_rows] if len(selection_rows) else None
    exact, _ = exact_top_k(database, queries, K)
    fit = database
    if len(database) > config.train_rows:
        rng = np.random.default_rng(config.training.seed)
        fit = database[np.sort(rng.choice(len(database), config.train_rows, replace=False))]
    logger.info("hashing %d rows (%d-d) into %d bits, fit on %d; %d evaluation queries",
                len(database), table.dim, config.bits, len(fit), len(queries))  # fmt: skip

    started = time.perf_counter()
    itq, errors = train_itq(
        fit, config.bits, config.training.itq_iterations, config.training.seed,
        table.encoder_id,
    )  # fmt: skip
    itq_seconds = time.perf_counter() - started
    mean, components = pca_projection(fit, config.bits)
    results: dict[str, Any] = {
        "itq": {
            **evaluate(itq, database, queries, exact, config.rerank),
            "seconds": round(itq_seconds, 1),
            "quantization_error": round(errors[-1], 4),
            "pca_sign_quantization_error": round(quantization_error((fit - mean) @ components), 4),
        }
    }
    chosen = itq
    history: dict[str, Any] | None = None
    if config.method == "autoencoder":
        chosen, history = train_autoencoder(
            fit, config.bits, config.training, selection, table.encoder_id
        )
        results["autoencoder"] = {
            **evaluate(chosen, database, queries, exact, config.rerank),
            "seconds": history["seconds"],
            "best_epoch": history["best_epoch"],
        }
    for method, figures in results.items():
        logger.info("%s %d bits: %s", method, config.bits, figures)
    metadata = {
        "dataset": {
            "table": config.table, "files": [Path(p).name for p in paths], "rows": len(table),
            "rows_searched": len(database), "rows_trained": len(fit), "dim": table.dim,
        },
        "image_encoder": {"encoder_id": table.encoder_id},
        "training_config": {
            "method": config.method, "bits": config.bits,
            "eval_queries": config.eval_queries, "selection_queries": config.selection_queries,
            **dataclasses.asdict(config.training),
        },
        "itq_errors": [round(e, 4) for e in errors[:: max(1, len(errors) // 10)]],
        "history": history,
        "heldout_metrics": results,
    }  # fmt: skip
    return save_hashing_model(config.out, config.model_name, chosen, metadata)


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO)
    config = parse_args(argv)
    folder = run(config)
    print(f"saved {folder}")
    return 0
