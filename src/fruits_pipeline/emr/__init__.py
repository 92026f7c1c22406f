"""Deployment to AWS EMR: the cluster request built from conf/emr/cluster.yml (``cluster``), the
release on S3: wheel, wheelhouse, conf archive, bootstrap script, exported model (``release``),
and the cluster's own PySpark for the nodes' virtualenv (``cluster_spark``). The commands,
``kedro emr ...``, are in ``commands``."""
