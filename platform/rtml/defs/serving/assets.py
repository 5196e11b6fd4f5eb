"""The scoring service's bento: the production model version packaged with ``FraudScorer``."""

import dagster as dg

from rtml.config import Settings
from rtml.defs.online.resources import RedisResource
from rtml.defs.resources import PostgresResource
from rtml.defs.training.assets import production_model
from rtml.defs.training.resources import MlflowResource
from rtml.stack import scorer_process


@dg.asset(deps=[production_model], group_name="serving", kinds={"bentoml"})
def fraud_scorer_bento(
    context: dg.AssetExecutionContext,
    postgres: PostgresResource,
    redis: RedisResource,
    mlflow: MlflowResource,
    settings: dg.ResourceParam[Settings],
) -> dg.MaterializeResult:
    """``bentoml build`` of ``rtml.serving`` around the version holding ``production`` (imported into the
    BentoML store under the data directory); ``bentoml serve fraud_scorer:latest`` serves it."""
    env = scorer_process.serving_env(settings, postgres.database_url(), redis.redis_url(), mlflow.uri())
    env["RTML_MODEL_NAME"] = mlflow.model_name
    try:
        bento, model = scorer_process.build_bento(env)
    except scorer_process.BentoBuildError as error:
        raise dg.Failure(str(error), allow_retries=False) from error
    context.log.info(f"built {bento} with {model}")
    return dg.MaterializeResult(
        metadata={
            "bento": bento,
            "bentoml_model": model,
            "model_version": model.rsplit(":v", 1)[-1],
            "bentoml_home": str(settings.services.bentoml_home),
            "serve": f"BENTOML_HOME={settings.services.bentoml_home} bentoml serve {bento}",
        }
    )
