"""The stage layer: one module per pipeline stage, holding its `run_*` function and its spec (what makes it
re-run). Stages use the library (config, data, models, train, eval) and never import dcm.ops."""
