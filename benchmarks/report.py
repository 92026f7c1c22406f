"""The figures of a benchmark run: per size, the steady state, the targets, the table."""

from __future__ import annotations

import itertools
import math
import os
import platform
import time

from benchmarks.config import TARGETS, base_config

# The part of the whole run that each stage's node runs and loads count in; every save counts in
# "writes", and what no hook timed (imports, the Kedro session, the SparkSession) in "start_up".
STAGE_PARTS = {
    "ingestion": "ingestion",
    "featurization": "model",
    "dimensionality_reduction": "pca",
    "app_embedder": "embedder",
    "reporting": "reports",
    "classification": "classification",
}
# A save shorter than this is left out of the writes listed one by one.
LISTED_WRITE_MIN_S = 0.5


def breakdown(run: dict) -> tuple[dict[str, float], dict[str, float]]:
    """The whole run in parts (start-up, ingestion, model, PCA, embedder, reports, writes),
    seconds adding up to it, and the longer writes one by one. A Spark node is lazy where its
    output is a DataFrame: the projection runs in the write of ``pca_features``."""
    parts = dict.fromkeys(["start_up", *STAGE_PARTS.values(), "writes"], 0.0)
    writes: dict[str, float] = {}
    for stage, timed in run["timings"].items():
        parts[STAGE_PARTS[stage]] += sum(timed.get("nodes", {}).values()) + sum(
            timed.get("loads", {}).values()
        )
        for dataset, seconds in timed.get("saves", {}).items():
            parts["writes"] += seconds
            writes[dataset] = writes.get(dataset, 0.0) + seconds
    parts["start_up"] = run["whole_run"] - sum(parts.values())
    listed = {name: round(s, 2) for name, s in writes.items() if s >= LISTED_WRITE_MIN_S}
    return {name: round(seconds, 2) for name, seconds in parts.items()}, listed


def _stage_seconds(run: dict, stage: str) -> float:
    """A stage's node runs, loads and saves, in seconds."""
    timed = run["timings"].get(stage, {})
    return sum(seconds for names in timed.values() for seconds in names.values())


def summarize_size(
    size: int, raw_runs: list[dict], pipeline_runs: list[dict], params: str, spark_floor_s: float
) -> dict:
    """The figures of one size from its repeated runs: the fastest raw run and the fastest
    pipeline run (to the features), as timeit does, since noise only ever adds time; peak memory
    is the highest of all runs. Every run's times are kept under ``runs``.

    ``ratio_ceiling`` is the most any Spark pipeline could reach at this size: the model's own
    time at the raw speed plus Spark's floor (``floor_child``) and nothing else."""
    raw = max(
        raw_runs,
        key=lambda run: run["raw_img_s"],
        default={"raw_img_s": float("nan"), "raw_batch_size": None, "raw_trials_img_s": {}},
    )
    best = min(pipeline_runs, key=lambda run: run["to_features"])
    pipeline_img_s = size / best["to_features"]
    cores = os.cpu_count() or 1
    model_s = size / raw["raw_img_s"]
    ratio_ceiling = model_s / (model_s + spark_floor_s)
    parts, writes = breakdown(best)
    # The chain from ingestion to the reports; the classification is timed on its own line.
    classification_s = _stage_seconds(best, "classification")
    chain_s = best["whole_run"] - classification_s
    return {
        "images": size,
        "raw_img_s": round(raw["raw_img_s"], 2),
        "raw_batch_size": raw["raw_batch_size"],
        "raw_layout": raw.get("raw_layout"),
        "raw_layouts_img_s": {k: round(v, 2) for k, v in raw.get("raw_layouts_img_s", {}).items()},
        "raw_trials_img_s": {str(k): round(v, 2) for k, v in raw["raw_trials_img_s"].items()},
        "raw_peak_mb": round(raw["raw_peak_mb"], 1) if raw_runs else None,
        "pipeline_img_s": round(pipeline_img_s, 2),
        "ratio": round(pipeline_img_s / raw["raw_img_s"], 3),
        "ratio_ceiling": round(ratio_ceiling, 3),
        "params": params,
        "ingestion_s": round(best["ingestion"], 2),
        "featurize_s": round(best["featurization"], 2),
        "to_features_s": round(best["to_features"], 2),
        "pca_s": round(best["dimensionality_reduction"], 2),
        "pca_share_of_featurize": round(
            best["dimensionality_reduction"] / best["featurization"], 3
        ),
        "app_embedder_s": round(best["app_embedder"], 2),
        "reporting_s": round(best["reporting"], 2),
        "whole_run_s": round(chain_s, 2),
        "whole_run_over_raw": round(size / chain_s / raw["raw_img_s"], 3),
        "classification_s": round(classification_s, 2),
        "classification_share_of_run": round(classification_s / chain_s, 3),
        "classifier": best.get("classifier"),
        "breakdown_s": parts,
        "writes_s": writes,
        "timings_s": {
            stage: {
                kind: {name: round(t, 3) for name, t in names.items()}
                for kind, names in timed.items()
            }
            for stage, timed in best["timings"].items()
        },
        "jvm_blas_lapack": best["jvm_blas_lapack"],
        "per_core_img_s": round(pipeline_img_s / cores, 2),
        "per_core_ceiling_img_s": round(ratio_ceiling * raw["raw_img_s"] / cores, 2),
        "driver_peak_mb": round(max(run["driver_peak_mb"] for run in pipeline_runs), 1),
        "worker_peak_mb": round(max(run["worker_peak_mb"] for run in pipeline_runs), 1),
        "runs": {
            "raw_img_s": [round(run["raw_img_s"], 2) for run in raw_runs],
            "to_features_s": [round(run["to_features"], 2) for run in pipeline_runs],
            "ingestion_s": [round(run["ingestion"], 2) for run in pipeline_runs],
            "featurize_s": [round(run["featurization"], 2) for run in pipeline_runs],
            "pca_s": [round(run["dimensionality_reduction"], 2) for run in pipeline_runs],
            "whole_run_s": [
                round(run["whole_run"] - _stage_seconds(run, "classification"), 2)
                for run in pipeline_runs
            ],
        },
    }


def environment() -> dict:
    from fruits_pipeline.run_info import library_versions

    return {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "parameters": {"featurization": base_config("parameters")["featurization"]},
        "spark": base_config("spark"),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def print_table(
    results: list[dict], steady: dict | None, spark_floor: dict, checks: list[dict]
) -> None:
    columns = (
        ("images", "images"),
        ("raw img/s", "raw_img_s"),
        ("pipeline img/s", "pipeline_img_s"),
        ("ratio", "ratio"),
        ("per core", "per_core_img_s"),
        ("ingest s", "ingestion_s"),
        ("featurize s", "featurize_s"),
        ("pca s", "pca_s"),
        ("pca/feat", "pca_share_of_featurize"),
        ("embedder s", "app_embedder_s"),
        ("report s", "reporting_s"),
        ("whole run s", "whole_run_s"),
        ("whole/raw", "whole_run_over_raw"),
        ("driver MB", "driver_peak_mb"),
        ("workers MB", "worker_peak_mb"),
    )
    print(" | ".join(title for title, _ in columns))
    for result in results:
        print(" | ".join(str(result[key]) for _, key in columns))
    print("MLlib's BLAS, LAPACK in the pipeline's JVM: " + results[0]["jvm_blas_lapack"])
    for result in results:
        parts = ", ".join(f"{name} {seconds}" for name, seconds in result["breakdown_s"].items())
        writes = ", ".join(f"{name} {seconds}" for name, seconds in result["writes_s"].items())
        print(f"whole run at {result['images']} images, in s: {parts} (writes: {writes})")
    if steady:
        cores = os.cpu_count() or 1
        print(
            f"steady state, featurization stage from {steady['images_from']} to "
            f"{steady['images_to']} images: {steady['img_s']} images/s, "
            f"{steady['img_s'] / cores:.1f} per core, {steady['x_raw']} x raw"
        )
    print(
        f"Spark's floor (a fresh process: PySpark and pandas imported, the SparkSession, a first "
        f"pandas UDF job on every task slot; no Kedro, no file, no model): "
        f"{spark_floor['seconds']} s ({spark_floor['imports_s']} + {spark_floor['session_s']} + "
        f"{spark_floor['first_udf_job_s']})"
    )
    print("targets:")
    for target in checks:
        verdict = {True: "met", False: "NOT met", None: "n/a"}[target["met"]]
        print(f"  {target['target']} {target['goal']}: {target['measured']} -> {verdict}")


def steady_state(results: list[dict]) -> dict | None:
    """The featurization stage's rate on the images added between the two largest sizes, where
    the fixed costs cancel out: ``images_from``, ``images_to``, ``img_s`` and ``x_raw`` (against
    the raw model at the larger size); None with fewer than two sizes."""
    if len(results) < 2:
        return None
    smaller, larger = sorted(results, key=lambda result: result["images"])[-2:]
    rate = (larger["images"] - smaller["images"]) / (larger["featurize_s"] - smaller["featurize_s"])
    raw = larger.get("raw_img_s")
    return {
        "images_from": smaller["images"],
        "images_to": larger["images"],
        "img_s": round(rate, 2),
        "x_raw": round(rate / raw, 3) if raw and not math.isnan(raw) else None,
    }


def classifier_targets(largest: dict) -> list[dict]:
    """The classification's targets at the largest size: its share of the run, its accuracy
    (Training trains, Test evaluates), the similar-photo share and the app's time per photo."""
    figures = largest.get("classifier") or {}
    images = largest["images"]
    measured = [
        (
            f"classification / whole run at {images} images",
            "<=",
            "classification_share_max",
            largest["classification_share_of_run"],
        ),
        (
            f"classifier top-1 at {images} images",
            ">=",
            "classifier_top1_min",
            figures.get("top1_accuracy"),
        ),
        (
            f"share of the 5 nearest Training photos with a Test photo's label at {images}",
            ">=",
            "similar5_same_label_share_min",
            figures.get("similar5_same_label_share"),
        ),
        (
            f"classify --similar 5, ms a photo ({figures.get('classify_photos')} photos)",
            "<=",
            "classify_ms_per_photo_max",
            figures.get("classify_similar5_ms_per_photo"),
        ),
    ]
    checks = []
    for name, sense, key, value in measured:
        goal = TARGETS[key]
        met = None if value is None else (value <= goal if sense == "<=" else value >= goal)
        checks.append(
            {
                "target": name,
                "goal": f"{sense} {goal}",
                "measured": None if value is None else round(value, 4),
                "met": met,
            }
        )
    return checks


def targets(results: list[dict], steady: dict | None) -> list[dict]:
    """The issues' targets against this run's figures (met is None where the sizes or the raw
    measurement needed are missing)."""
    ordered = sorted(results, key=lambda result: result["images"])
    smallest, largest = ordered[0], ordered[-1]

    def target(name: str, goal: str, measured, met) -> dict:
        return {"target": name, "goal": goal, "measured": measured, "met": met}

    x_raw = steady["x_raw"] if steady else None
    whole = largest["whole_run_over_raw"]
    checks = [
        target(
            "featurization steady state / raw"
            + (f", {steady['images_from']} -> {steady['images_to']} images" if steady else ""),
            f">= {TARGETS['steady_state_over_raw_min']}",
            x_raw,
            None if x_raw is None else x_raw >= TARGETS["steady_state_over_raw_min"],
        ),
        target(
            f"whole run / raw at {largest['images']} images, cold start included",
            f">= {TARGETS['whole_run_over_raw_min']}",
            whole,
            None if math.isnan(whole) else whole >= TARGETS["whole_run_over_raw_min"],
        ),
        target(
            f"PCA pipeline / featurization at {largest['images']} images",
            f"<= {TARGETS['pca_share_of_featurize_max']}",
            largest["pca_share_of_featurize"],
            largest["pca_share_of_featurize"] <= TARGETS["pca_share_of_featurize_max"],
        ),
    ]
    checks += classifier_targets(largest)
    for key in ("driver_peak_mb", "worker_peak_mb"):
        growth = None
        if len(ordered) > 1:
            growth = round(largest[key] / smallest[key] - 1, 3)
        checks.append(
            target(
                f"{key} growth from {smallest['images']} to {largest['images']} images",
                f"<= +{TARGETS['memory_growth_max']}",
                growth,
                None if growth is None else growth <= TARGETS["memory_growth_max"],
            )
        )
    # Linear: seconds per added image alike (within 20 %) between each pair of consecutive sizes.
    per_image = [
        round(
            (larger["to_features_s"] - smaller["to_features_s"])
            / (larger["images"] - smaller["images"]),
            5,
        )
        for smaller, larger in itertools.pairwise(ordered)
    ]
    checks.append(
        target(
            "run time linear in images: seconds per added image, consecutive sizes",
            f"within {TARGETS['linear_spread_max']:.0%} of each other",
            per_image,
            None
            if len(per_image) < 2
            else max(per_image) <= (1 + TARGETS["linear_spread_max"]) * min(per_image),
        )
    )
    return checks
