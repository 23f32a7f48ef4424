"""``infra/pipeline-options.yaml`` -> command-line flags, for a direct launch or a Flex Template.

    python infra/options.py beam-args [--set KEY=VALUE ...]  # python -m pipelines.index_job
    python infra/options.py flex-args [--set KEY=VALUE ...]  # gcloud dataflow flex-template run

One argument per output line (launch.sh reads them into an array, so values with spaces or
semicolons survive). ``--set`` overrides a key of either section (``dataflow`` or ``job``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_PATH = HERE / "pipeline-options.yaml"
METADATA_PATH = HERE / "flex-template" / "metadata.json"
SECTIONS = ("dataflow", "job")

# Dataflow settings gcloud's flex-template run takes as its own flags; every other dataflow
# key goes through --additional-pipeline-options.
_GCLOUD_FLAGS = {
    "project": "--project",
    "region": "--region",
    "temp_location": "--temp-location",
    "staging_location": "--staging-location",
    "machine_type": "--worker-machine-type",
    "max_num_workers": "--max-workers",
    "experiments": "--additional-experiments",
}
_NOT_FOR_FLEX = {"runner"}  # a Flex Template always runs on Dataflow


def load_options(path: Path = DEFAULT_PATH, overrides: list[str] = ()) -> dict[str, dict]:
    """The two sections of the options file, with ``KEY=VALUE`` overrides applied."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)}; expected {SECTIONS}")
    options = {section: dict(data.get(section) or {}) for section in SECTIONS}
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {override!r}")
        section = "job" if key in job_keys() else "dataflow"
        options[section][key] = value
    return options


def job_keys() -> set[str]:
    """The job's own flags: the Flex Template's parameters (infra/flex-template/metadata.json)."""
    metadata = json.loads(METADATA_PATH.read_text())
    return {parameter["name"] for parameter in metadata["parameters"]}


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def beam_args(options: dict[str, dict]) -> list[str]:
    """Every setting as ``--key=value``: argv for ``python -m pipelines.index_job``."""
    merged = {**options["dataflow"], **options["job"]}
    return [f"--{key}={_text(value)}" for key, value in merged.items()]


def flex_args(options: dict[str, dict]) -> list[str]:
    """Flags for ``gcloud dataflow flex-template run``: its own flags, the rest as options."""
    args, extra = [], []
    for key, value in options["dataflow"].items():
        if key in _NOT_FOR_FLEX:
            continue
        if key in _GCLOUD_FLAGS:
            args.append(f"{_GCLOUD_FLAGS[key]}={_text(value)}")
        else:
            extra.append(f"{key}={_text(value)}")
    # gcloud splits list flags on ','; a leading '^~^' makes '~' the separator instead, so
    # values may hold ',' and ';' (the accelerator setting does).
    if extra:
        args.append("--additional-pipeline-options=^~^" + "~".join(extra))
    params = [f"{key}={_text(value)}" for key, value in options["job"].items()]
    if params:
        args.append("--parameters=^~^" + "~".join(params))
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("form", choices=("beam-args", "flex-args"))
    parser.add_argument("--file", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    options = load_options(args.file, args.set)
    rendered = beam_args(options) if args.form == "beam-args" else flex_args(options)
    sys.stdout.write("".join(f"{arg}\n" for arg in rendered))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
