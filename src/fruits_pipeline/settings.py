"""Project settings (Kedro reads this module when a session starts).

See https://docs.kedro.org/en/stable/configure/configuration_basics/ for the defaults.
"""

import warnings

from kedro.config import OmegaConfigLoader
from omegaconf.resolvers import oc

from fruits_pipeline import s3_encryption
from fruits_pipeline.hooks import (
    NothingNewHooks,
    PreflightHooks,
    RedactionHooks,
    RunLockHooks,
    SparkHooks,
)

# RedactionHooks redacts URIs (a presigned URL's signature) from the console and the log file.
# When a pipeline run starts, PreflightHooks checks that its inputs (images, weights, S3
# buckets) can be had, RunLockHooks takes the outputs' lock, NothingNewHooks ends a run that
# has nothing to do, and SparkHooks builds the SparkSession from conf/<env>/spark.yml (in this
# order: tryfirst; pluggy calls the wrapper registered last first, so the lock's wraps
# NothingNewHooks'; trylast).
HOOKS = (RedactionHooks(), PreflightHooks(), NothingNewHooks(), RunLockHooks(), SparkHooks())

# Kedro 1.7 registers its resolvers with OmegaConf's deprecated call: nothing a user can act on.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated")

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "config_patterns": {
        "spark": ["spark*", "spark*/**"],
        "globals": ["globals*", "globals*/**"],
        # The EMR cluster definition read by `kedro emr ...` (conf/emr/cluster.yml).
        "cluster": ["cluster*", "cluster*/**"],
    },
    # conf/emr/globals.yml takes the bucket and prefix from FRUITS_S3_BUCKET/FRUITS_S3_PREFIX:
    # one setting for every S3 path, and none of them hard-coded in the repository.
    # s3_encryption (conf/emr/globals.yml) as S3A and s3fs spell it.
    "custom_resolvers": {
        "oc.env": oc.env,
        "s3a_encryption": s3_encryption.s3a_algorithm,
        "s3fs_encryption": s3_encryption.s3fs_kwargs,
    },
}
