"""Standardization + PCA fitted from numpy moments, returned as MLlib models.

MLlib's ``PCA.fit`` decomposes the 1280x1280 covariance with LAPACK through netlib: with a
system BLAS/LAPACK that takes ~1 s, with the pure-Java fallback of a fresh machine ~20 s. numpy's
wheels carry their own BLAS and LAPACK, so here each partition reduces its features to numpy
moments (count, mean, centred cross-products) read through Arrow, Spark combines the partitions'
moments on the executors, and the driver decomposes the correlation matrix with numpy (~0.2 s).
The result is the ``StandardScalerModel`` and ``PCAModel`` that ``StandardScaler`` then ``PCA``
would fit (equal up to each component's sign), so saving and loading stay MLlib's.

Projection has the same trouble, in proportion to k: MLlib's ``PCAModel.transform`` multiplies
each row by the 1280 x k axes with netlib's Java BLAS where no system BLAS is installed.
``project`` computes the same coordinates with numpy, one Arrow batch at a time (tested equal
to MLlib's transform; docs/performance.md has what it gains at this data set's k and above).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import pyarrow as pa
from pyspark import SparkContext
from pyspark.ml.feature import PCAModel, StandardScalerModel
from pyspark.ml.wrapper import JavaWrapper
from pyspark.sql import DataFrame
from pyspark.sql.types import ArrayType, DoubleType, StructField, StructType

from fruits_pipeline.projection import Projection

# Rows folded into a partition's moments at a time: one float64 block of 2,048 x 1,280 (21 MB).
_BLOCK_ROWS = 2048
MOMENTS_SCHEMA = "images long, mean binary, cross_products binary"


class Moments(NamedTuple):
    """Count, mean and centred cross-products (sum of (x - mean)(x - mean)^T) of vectors."""

    images: int
    mean: np.ndarray
    cross_products: np.ndarray

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets (Chan et al.'s pairwise update: each side is centred on its
        own mean, so large offsets do not cancel the digits of a small spread)."""
        if other.images == 0:
            return self
        if self.images == 0:
            return other
        images = self.images + other.images
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.images / images)
        cross_products = (
            self.cross_products
            + other.cross_products
            + np.outer(delta, delta) * (self.images * other.images / images)
        )
        return Moments(images, mean, cross_products)

    def subtract(self, other: Moments) -> Moments:
        """The moments of this set without ``other``, a subset of it: ``merge`` undone."""
        if other.images == 0:
            return self
        images = self.images - other.images
        if images <= 0:
            return _NO_MOMENTS
        mean = (self.mean * self.images - other.mean * other.images) / images
        delta = other.mean - mean
        cross_products = (
            self.cross_products
            - other.cross_products
            - np.outer(delta, delta) * (images * other.images / self.images)
        )
        return Moments(images, mean, cross_products)

    def explained_share(self, projection: Projection) -> float:
        """The share of these vectors' variance, once standardized by ``projection``'s scaler,
        that its k axes explain: trace(A^T S C S A) / trace(S C S), C the covariance, S the
        scaling, A the axes (what a pass over the rows with MLlib's Summarizer measured)."""
        standardized = self.cross_products * np.outer(projection.scale, projection.scale)
        total = float(np.trace(standardized))
        if total <= 0:
            return 1.0
        axes = projection.components
        return float(np.einsum("ij,ij->", axes, standardized @ axes)) / total


# The moments of no vector: what merging starts from.
_NO_MOMENTS = Moments(0, np.zeros(0), np.zeros((0, 0)))


def block_moments(block: np.ndarray) -> Moments:
    """The moments of the rows of ``block``, in float64."""
    rows = block.astype(np.float64)
    mean = rows.mean(axis=0)
    centred = rows - mean
    return Moments(len(rows), mean, centred.T @ centred)


def _moments_batch(moments: Moments) -> pa.RecordBatch:
    """``moments`` as one row of MOMENTS_SCHEMA (Arrow reads int64 and binary from these)."""
    return pa.RecordBatch.from_pydict(
        {
            "images": [moments.images],
            "mean": [moments.mean.tobytes()],
            "cross_products": [moments.cross_products.tobytes()],
        }
    )


def _row_moments(row) -> Moments:
    """The moments held by a row of MOMENTS_SCHEMA (a dict, or a collected Row)."""
    mean = np.frombuffer(row["mean"], dtype=np.float64)
    cross_products = np.frombuffer(row["cross_products"], dtype=np.float64)
    return Moments(row["images"], mean, cross_products.reshape(mean.size, mean.size))


def _partition_moments(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    moments = _NO_MOMENTS
    pending: list[np.ndarray] = []
    pending_rows = 0

    def fold() -> None:
        nonlocal moments, pending, pending_rows
        moments = moments.merge(block_moments(np.concatenate(pending)))
        pending, pending_rows = [], 0

    for batch in batches:
        vectors = batch.column(0)
        if len(vectors) == 0:
            continue
        # The list array's values, one buffer for the batch: no Python object per image.
        pending.append(np.asarray(vectors.flatten()).reshape(len(vectors), -1))
        pending_rows += len(vectors)
        if pending_rows >= _BLOCK_ROWS:
            fold()
    if pending:
        fold()
    if moments.images:
        yield _moments_batch(moments)


def _merged_moments(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    parts = (_row_moments(row) for batch in batches for row in batch.to_pylist())
    merged = functools.reduce(Moments.merge, parts, _NO_MOMENTS)
    if merged.images:
        yield _moments_batch(merged)


def feature_moments(vectors: DataFrame, column: str) -> Moments:
    """The moments of the ``array<float>`` column ``column`` (no nulls) of ``vectors``: one
    pass, each partition reduced by numpy, then the partitions' moments merged in about
    sqrt(partitions) tasks, and those on the driver. Arrow all the way: a Python RDD's
    ``treeAggregate`` did the same, but paid ~3 s in every run to start its own path through
    Spark (docs/performance.md)."""
    per_partition = vectors.select(column).mapInArrow(_partition_moments, MOMENTS_SCHEMA)
    groups = max(1, round(math.sqrt(per_partition.rdd.getNumPartitions())))
    merged = per_partition.repartition(groups).mapInArrow(_merged_moments, MOMENTS_SCHEMA)
    return functools.reduce(Moments.merge, map(_row_moments, merged.collect()), _NO_MOMENTS)


class StandardizedPCA(NamedTuple):
    """What StandardScaler(withMean, withStd) then a full-spectrum PCA fit: the features' mean
    and sample standard deviation, the principal axes (columns, by decreasing variance) and each
    axis's share of the standardized variance."""

    mean: np.ndarray
    std: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray


def standardized_pca(moments: Moments) -> StandardizedPCA:
    """PCA of the standardized features: the eigen-decomposition of their covariance (the
    correlation matrix; constant features standardize to 0, as in MLlib)."""
    covariance = moments.cross_products / (moments.images - 1)
    std = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    scale = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0)
    standardized = covariance * np.outer(scale, scale)
    eigenvalues, eigenvectors = np.linalg.eigh(standardized)
    order = np.argsort(eigenvalues)[::-1]
    variances = np.clip(eigenvalues[order], 0.0, None)
    total = variances.sum()
    shares = variances / total if total > 0 else variances
    return StandardizedPCA(moments.mean, std, _signed(eigenvectors[:, order]), shares)


def _signed(axes: np.ndarray) -> np.ndarray:
    """``axes`` with each column's largest entry (in absolute value) positive, as scikit-learn's
    ``svd_flip``: an eigenvector's sign is arbitrary, and ``eigh`` flips it with the last bits
    of the covariance, which depend on how the partitions' moments were summed (locally or on a
    cluster, in 2 files or 35). So the same table gives the same coordinates wherever it is
    fitted."""
    largest = np.abs(axes).argmax(axis=0)
    signs = np.sign(axes[largest, np.arange(axes.shape[1])])
    return axes * np.where(signs == 0, 1.0, signs)


def project(rows: DataFrame, column: str, output: str, projection: Projection) -> DataFrame:
    """``rows`` with the ``array<float>`` column ``column`` (no nulls) replaced by ``output``,
    the ``projection`` of each row as ``array<double>``, batch by batch in numpy."""
    kept = [field for field in rows.schema.fields if field.name != column]
    schema = StructType([*kept, StructField(output, ArrayType(DoubleType(), False), False)])
    k = projection.k

    def project_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            vectors = batch.column(column)
            coordinates = projection(np.asarray(vectors.flatten()).reshape(len(vectors), -1))
            offsets = np.arange(0, (len(vectors) + 1) * k, k, dtype=np.int32)
            projected = pa.ListArray.from_arrays(pa.array(offsets), pa.array(coordinates.ravel()))
            yield pa.RecordBatch.from_arrays(
                [*(batch.column(field.name) for field in kept), projected],
                names=schema.fieldNames(),
            )

    return rows.mapInArrow(project_batches, schema)


def _java_doubles(values: np.ndarray):
    """A Java double[] with ``values``, sent as one byte string (py4j converts a list of floats
    element by element)."""
    jvm = SparkContext._active_spark_context._jvm
    gateway = SparkContext._gateway
    flat = np.ascontiguousarray(values, dtype="<f8").ravel()
    array = gateway.new_array(jvm.double, flat.size)
    buffer = jvm.java.nio.ByteBuffer.wrap(bytearray(flat.tobytes()))
    buffer.order(jvm.java.nio.ByteOrder.LITTLE_ENDIAN).asDoubleBuffer().get(array)
    return array


def _dense_vector(values: np.ndarray):
    jvm = SparkContext._active_spark_context._jvm
    return jvm.org.apache.spark.ml.linalg.DenseVector(_java_doubles(values))


def mllib_models(
    fit: StandardizedPCA, k: int, uid: str, *, input_col: str, scaled_col: str, output_col: str
) -> tuple[StandardScalerModel, PCAModel]:
    """The MLlib scaler and PCA(k) models of ``fit``. PySpark has no public constructor for
    either; their Scala constructors are ``private[ml]``, public in the bytecode, and have kept
    their signatures since Spark 2.0: (uid, std, mean) and (uid, pc, explainedVariance)."""
    jvm = SparkContext._active_spark_context._jvm
    scaler = StandardScalerModel(
        JavaWrapper._new_java_obj(
            "org.apache.spark.ml.feature.StandardScalerModel",
            f"{uid}_scaler",
            _dense_vector(fit.std),
            _dense_vector(fit.mean),
        )
    )
    scaler = scaler.copy(
        {
            scaler.withMean: True,
            scaler.withStd: True,
            scaler.inputCol: input_col,
            scaler.outputCol: scaled_col,
        }
    )
    dimension = fit.components.shape[0]
    # DenseMatrix takes its values column by column: the first k columns, in order.
    leading = fit.components[:, :k].T
    pca = PCAModel(
        JavaWrapper._new_java_obj(
            "org.apache.spark.ml.feature.PCAModel",
            f"{uid}_pca",
            jvm.org.apache.spark.ml.linalg.DenseMatrix(dimension, k, _java_doubles(leading)),
            _dense_vector(fit.explained_variance[:k]),
        )
    )
    pca = pca.copy({pca.k: k, pca.inputCol: scaled_col, pca.outputCol: output_col})
    return scaler, pca
