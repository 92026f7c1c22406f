"""Deployment to AWS EMR: the cluster request built from conf/emr/cluster.yml, the release
(wheel, conf archive, bootstrap script) on S3, and the pipeline step. The commands are in
``fruits_pipeline.cli`` (``kedro emr ...``)."""
