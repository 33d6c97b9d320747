"""The distilled student as an MLflow pyfunc model (models-from-code: see model_code.py)."""
