"""Models-from-code entry point: MLflow executes this file to build the pyfunc model it serves."""

import mlflow

from dcm.ops.serving.pyfunc import DCMVideoModel

mlflow.models.set_model(DCMVideoModel())
