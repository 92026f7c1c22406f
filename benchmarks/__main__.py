"""Featurization benchmark: the pipeline through Spark against the model's own speed.

For each size it builds a folder of that many real images (the shared Fruits-360 sample,
replicated), then measures, each in a fresh process:

- raw: the same decoding, resizing, preprocessing and MobileNetV2 (the same LiteRT model) in
  plain Python using every core, at the best batch size, in the faster of two layouts: one
  process with one LiteRT thread per core (decoding in a thread pool, overlapped with inference),
  or one single-threaded process per core. This is the ceiling the pipeline is measured against;
- pipeline: a default `kedro run` through Kedro and Spark `local[*]` in one process, cold start
  (imports, JVM, Python workers, model load) included, with the whole run broken down into
  start-up, ingestion, model, PCA, embedder, reports and writes (Kedro hooks time every node,
  load and save); the classification pipeline on its own line, apart from the whole run's
  ratio (the chain from ingestion to the reports); then, in a fresh process, the classifier's
  accuracy, the similar-photo share and `classify_photos --similar 5` per photo;
- Spark's floor: what any Spark pipeline pays around its model with this project's Spark
  settings (imports, the SparkSession, a first pandas UDF job; no Kedro, no file, no model), so
  that the targets on the ratio and the rate per core come with the most Spark could reach;

while sampling the memory of the driver (Python + JVM) and of Spark's Python workers. Each
measurement runs ``--repeat`` times, in rounds over the sizes, and the fastest run counts (this
machine's speed drifts from minute to minute; noise only adds time). It prints a table and writes
the figures, and every run's times, as JSON.

and, with ``--growing-store SIZE`` (default 8192), the growing store's full, 1 % new and
nothing-new runs and the single-photo figures (``growing_store.py``). The package: ``children``
(what each fresh process measures), ``runs`` (images, projects, child processes, memory),
``report`` (figures, targets from ``targets.yml``, the table), ``growing_store``.

    python -m benchmarks [--sizes 512,2048,8192] [--repeat 2] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.children import (
    classifier_child,
    export_child,
    floor_child,
    pipeline_child,
    raw_child,
)
from benchmarks.config import DEFAULT_IMAGES, DEFAULT_WEIGHTS
from benchmarks.growing_store import growing_store_targets, measure_growing_store
from benchmarks.report import environment, print_table, steady_state, summarize_size, targets
from benchmarks.runs import (
    child_environment,
    make_project,
    measure_pipeline,
    measure_raw,
    replicate_images,
    run_child,
)


def main() -> None:
    # The measurements run_child starts, each in a fresh process.
    children = {
        "--child-raw": raw_child,
        "--child-pipeline": pipeline_child,
        "--child-export": export_child,
        "--child-floor": floor_child,
        "--child-classifier": classifier_child,
    }
    if len(sys.argv) > 1 and sys.argv[1] in children:
        return children[sys.argv[1]](*sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="512,2048,8192", help="comma-separated image counts")
    parser.add_argument("--out", default="benchmarks/results.json", help="JSON file to write")
    parser.add_argument("--images", default=str(DEFAULT_IMAGES), help="folder of real images")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="MobileNetV2 weights")
    parser.add_argument(
        "--params",
        default="",
        help="extra runtime parameters for the pipeline, as for kedro run "
        "(e.g. featurization.inference_batch_size=32)",
    )
    parser.add_argument(
        "--no-raw", action="store_true", help="skip the raw measurement (tuning runs)"
    )
    parser.add_argument(
        "--growing-store",
        type=int,
        default=8192,
        metavar="SIZE",
        help="images in the store for the full, 1 %% new and nothing-new runs (0: skip them)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="runs of each measurement, in rounds over the sizes; the fastest counts",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    sizes = [int(size) for size in args.sizes.split(",")]
    # Every run below reads the exported model from its cache, as a user's second run does: its
    # one-time cost is paid and shown apart.
    export, _ = run_child("export", args.weights)
    print(
        f"LiteRT model export: {export['seconds']:.1f} s "
        f"({'already in the cache' if export['was_cached'] else 'exported now'})",
        flush=True,
    )
    raw_runs: dict[int, list[dict]] = {size: [] for size in sizes}
    pipeline_runs: dict[int, list[dict]] = {size: [] for size in sizes}
    floor_runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fruits-bench-") as workdir:
        image_dirs = {size: Path(workdir) / f"images-{size}" for size in sizes}
        for size, image_dir in image_dirs.items():
            replicate_images(Path(args.images), image_dir, size)
        # Rounds over all the sizes rather than runs of one size in a row: a slow minute of the
        # machine then costs one run of one size, not all the runs of a size.
        for round_number in range(1, args.repeat + 1):
            floor_runs.append(run_child("floor")[0])
            print(f"round {round_number}, Spark's floor: {json.dumps(floor_runs[-1])}", flush=True)
            for size, image_dir in image_dirs.items():
                if not args.no_raw:
                    raw_runs[size].append(measure_raw(image_dir, Path(args.weights)))
                project = Path(workdir) / f"project-{size}-{round_number}"
                pipeline_runs[size].append(
                    measure_pipeline(image_dir, Path(args.weights), project, args.params)
                )
                latest = {
                    **(raw_runs[size][-1] if raw_runs[size] else {}),
                    **pipeline_runs[size][-1],
                }
                figures = {k: round(v, 2) for k, v in latest.items() if isinstance(v, float)}
                print(f"round {round_number}, {size} images: {json.dumps(figures)}", flush=True)
        growing = None
        if args.growing_store:
            store = Path(workdir) / "growing-store"
            replicate_images(Path(args.images), store, args.growing_store)
            growing = measure_growing_store(
                store,
                make_project(Path(workdir) / "growing-project"),
                Path(args.images),
                Path(args.weights),
                child_environment(),
            )
            print(f"growing store: {json.dumps(growing)}", flush=True)
    spark_floor = min(floor_runs, key=lambda run: run["seconds"])
    results = [
        summarize_size(
            size, raw_runs[size], pipeline_runs[size], args.params, spark_floor["seconds"]
        )
        for size in sizes
    ]
    steady = steady_state(results)
    report = {
        "environment": environment(),
        "litert_export": {key: export[key] for key in ("seconds", "was_cached")},
        "repeat": args.repeat,
        "spark_floor": {key: round(value, 2) for key, value in spark_floor.items()},
        "results": results,
        "steady_state": steady,
        "targets": targets(results, steady) + (growing_store_targets(growing) if growing else []),
    }
    if growing:
        report["growing_store"] = growing
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print_table(results, report["steady_state"], report["spark_floor"], report["targets"])
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
