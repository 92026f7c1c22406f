#!/bin/bash
# EMR bootstrap action (runs on every node, before Spark is installed, as the hadoop user):
# installs Python and the fruits_pipeline wheel with its dependencies in a virtualenv, with
# pyspark pinned to the Spark of the cluster's release so that the driver's Python side and the
# cluster's JVM side are the same Spark version. PYSPARK_PYTHON points Spark at this virtualenv
# through the spark-env classification of the cluster request.
#
# Arguments: <wheel s3:// URI> <Spark version of the release> <virtualenv folder> <python>
#            <conf archive s3:// URI> <pyproject.toml s3:// URI>
set -euo pipefail
WHEEL_URI="$1"
SPARK_VERSION="$2"
VENV="$3"
PYTHON="$4"
CONF_URI="$5"
PYPROJECT_URI="$6"

# Amazon Linux 2023 (EMR 7.x) ships Python 3.9 as python3; 3.11 is a dnf package.
if ! command -v "$PYTHON" >/dev/null; then
    sudo dnf install -y -q "$PYTHON" "$PYTHON-pip"
fi
sudo "$PYTHON" -m venv "$VENV"
sudo chown -R "$(id -u):$(id -g)" "$VENV"
"$VENV/bin/pip" install -q --upgrade pip

WORKDIR="$(mktemp -d)"
aws s3 cp --only-show-errors "$WHEEL_URI" "$WORKDIR/"
# [notebooks]: JupyterLab and ipykernel, for notebooks/emr_pipeline.ipynb on the primary node.
"$VENV/bin/pip" install -q "$WORKDIR/$(basename "$WHEEL_URI")[notebooks]" "pyspark==$SPARK_VERSION"
# The project folder notebooks open with %reload_kedro: its pyproject.toml and conf/ (the
# package itself is installed above; Kedro only needs src/ to exist).
mkdir -p "$VENV/project/src"
aws s3 cp --only-show-errors "$CONF_URI" "$WORKDIR/conf.tar.gz"
tar -xzf "$WORKDIR/conf.tar.gz" -C "$VENV/project"
aws s3 cp --only-show-errors "$PYPROJECT_URI" "$VENV/project/pyproject.toml"
# A Jupyter kernel on this virtualenv (inside it: nothing is written outside $VENV).
"$VENV/bin/python" -m ipykernel install --sys-prefix --name fruits-pipeline \
    --display-name "Python (fruits-pipeline)"
echo "fruits-pipeline installed in $VENV: $("$VENV/bin/python" -m pip show fruits_pipeline | grep ^Version)"
