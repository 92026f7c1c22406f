"""Project settings (Kedro reads this module when a session starts).

See https://docs.kedro.org/en/stable/configure/configuration_basics/ for the defaults.
"""

from kedro.config import OmegaConfigLoader

from fruits_pipeline.hooks import SparkHooks

# SparkHooks builds the SparkSession from conf/<env>/spark.yml when a pipeline run starts,
# after checking that the run's inputs (images, weights) can be had.
HOOKS = (SparkHooks(),)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "config_patterns": {
        "spark": ["spark*", "spark*/**"],
        "globals": ["globals*", "globals*/**"],
    },
}
