#!/usr/bin/env bash
# One command to (re)index a corpus on Dataflow and publish the result.
#
#   infra/launch.sh CORPUS ROOT [VERSION] [--flex] [--build] [--set KEY=VALUE ...]
#
#   CORPUS   gs:// folder, glob or manifest of images
#   ROOT     gs:// publish root; this run writes ROOT/versions/VERSION, then points
#            ROOT/latest.json at it (generation-matched: a concurrent publish fails, never mixes)
#   VERSION  default: the UTC time (YYYYmmddTHHMMSSZ)
#   --build  build and push the worker image first (docker + gcloud auth configure-docker)
#   --flex   run as a Flex Template (the launcher VM runs the job) instead of from this machine
#   --set    override a setting of infra/pipeline-options.yaml (e.g. --set max_num_workers=200)
#
# Settings live in infra/pipeline-options.yaml (project, region, buckets, image, machine type,
# GPU, workers); DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON="$(command -v python3)"

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2; }

positional=() overrides=() flex=0 build=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --flex) flex=1 ;;
    --build) build=1 ;;
    --set) [[ $# -ge 2 ]] || usage; overrides+=(--set "$2"); shift ;;
    -h|--help) usage ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) positional+=("$1") ;;
  esac
  shift
done
[[ ${#positional[@]} -ge 2 && ${#positional[@]} -le 3 ]] || usage
corpus="${positional[0]}"
root="${positional[1]%/}"
version="${positional[2]:-$(date -u +%Y%m%dT%H%M%SZ)}"
[[ "$corpus" == gs://* && "$root" == gs://* ]] || { echo "CORPUS and ROOT must be gs://" >&2; exit 2; }
[[ "$version" =~ ^[A-Za-z0-9._-]+$ ]] || { echo "bad VERSION $version" >&2; exit 2; }

run() {  # print the command; run it unless DRY_RUN=1
  printf '+'; printf ' %q' "$@"; printf '\n'
  [[ "${DRY_RUN:-0}" == 1 ]] || "$@"
}
option() {  # the value of one key of the options file (after --set overrides)
  "$PYTHON" "$HERE/options.py" beam-args "${overrides[@]}" | sed -n "s/^--$1=//p"
}

job=(--set "corpus=$corpus" --set "out=$root/versions/$version" --set "run_version=$version")
image="$(option sdk_container_image)"
cd "$REPO"

if [[ $build == 1 ]]; then
  run docker build -f infra/Dockerfile -t "$image" .
  run docker push "$image"
fi

if [[ $flex == 1 ]]; then
  spec="$(option staging_location)/templates/imgsearch-index.json"
  run gcloud dataflow flex-template build "$spec" --image "$image" \
    --sdk-language PYTHON --metadata-file infra/flex-template/metadata.json
  mapfile -t flags < <("$PYTHON" infra/options.py flex-args "${overrides[@]}" "${job[@]}")
  job_name="imgsearch-index-$(tr -c 'a-z0-9\n' '-' <<<"${version,,}")"  # [-a-z0-9] only
  run gcloud dataflow flex-template run "$job_name" \
    --template-file-gcs-location "$spec" "${flags[@]}"
  echo "Flex Template job submitted; when it succeeds, publish with:"
  echo "  $PYTHON -c \"from index.publish import write_pointer; write_pointer('$root', '$version')\""
  exit 0
fi

# Direct: this machine submits the job, waits for it, builds the ScaNN index from the table and
# writes the manifest (the same code path as the Airflow DAG), then publishes the pointer.
mapfile -t flags < <("$PYTHON" infra/options.py beam-args "${overrides[@]}" "${job[@]}")
run "$PYTHON" -m pipelines.index_job "${flags[@]}"
run "$PYTHON" -c "from index.publish import write_pointer; print(write_pointer('$root', '$version'))"
