"""Prefect flows: orchestration around the stage functions of dcm.stages (retries, parallel tasks, artifacts)."""
