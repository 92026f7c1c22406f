#!/bin/bash
# EMR bootstrap action (runs on every node, before Spark is installed, as the hadoop user):
# installs the project in a virtualenv from the release's wheelhouse, with no package index:
# a node in a private subnet without a NAT gateway needs only S3. The virtualenv has neither
# pip's pyspark nor TensorFlow: it sees the cluster's own Spark (/usr/lib/spark/python and its
# py4j) through a .pth file resolved when Python starts, since Spark is installed after this
# script. PYSPARK_PYTHON points Spark at the virtualenv (spark-env classification).
#
# Arguments: <wheelhouse s3:// folder> <wheel s3:// URI> <virtualenv folder> <python>
#            <conf archive s3:// URI> <pyproject.toml s3:// URI> <extras, comma-separated>
set -euo pipefail
WHEELHOUSE_URI="$1"
WHEEL_URI="$2"
VENV="$3"
PYTHON="$4"
CONF_URI="$5"
PYPROJECT_URI="$6"
EXTRAS="${7:-}"

# Amazon Linux 2023 (EMR 7.x) has python3.11; a node without it gets the interpreter alone
# (pip comes from the wheelhouse, whatever the system has).
if ! command -v "$PYTHON" >/dev/null; then
    sudo dnf install -y -q "$PYTHON"
fi
WORKDIR="$(mktemp -d)"
WHEELS="$WORKDIR/wheelhouse"
aws s3 cp --only-show-errors --recursive "$WHEELHOUSE_URI/$(uname -m)/" "$WHEELS/"
aws s3 cp --only-show-errors "$WHEEL_URI" "$WHEELS/"

sudo "$PYTHON" -m venv --without-pip "$VENV"
sudo chown -R "$(id -u):$(id -g)" "$VENV"
# pip itself, run from its own wheel, then everything else: from the wheelhouse only.
PIP_WHEEL="$(ls "$WHEELS"/pip-*.whl)"
"$VENV/bin/python" "$PIP_WHEEL/pip" install -q --no-index --find-links "$WHEELS" pip
WHEEL="$WHEELS/$(basename "$WHEEL_URI")"
"$VENV/bin/pip" install -q --no-index --find-links "$WHEELS" "$WHEEL${EXTRAS:+[$EXTRAS]}"

# The cluster's Spark, found when the interpreter starts ($SPARK_HOME, else EMR's folder).
SITE_PACKAGES="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "import fruits_pipeline.emr.cluster_spark as spark; spark.add_to_path()" \
    >"$SITE_PACKAGES/fruits_pipeline_cluster_spark.pth"

# The project folder notebooks open with %reload_kedro: its pyproject.toml and conf/ (the
# package itself is installed above; Kedro only needs src/ to exist).
mkdir -p "$VENV/project/src"
aws s3 cp --only-show-errors "$CONF_URI" "$WORKDIR/conf.tar.gz"
tar -xzf "$WORKDIR/conf.tar.gz" -C "$VENV/project"
aws s3 cp --only-show-errors "$PYPROJECT_URI" "$VENV/project/pyproject.toml"
if "$VENV/bin/python" -c "import ipykernel" 2>/dev/null; then
    # A Jupyter kernel on this virtualenv (inside it: nothing is written outside $VENV).
    "$VENV/bin/python" -m ipykernel install --sys-prefix --name fruits-pipeline \
        --display-name "Python (fruits-pipeline)"
fi
rm -rf "$WORKDIR"
VERSION="$("$VENV/bin/python" -m pip show fruits_pipeline | sed -n 's/^Version: //p')"
echo "fruits-pipeline $VERSION installed in $VENV in $SECONDS s"
