"""Training loops, one module per task; each is a plain function (config, run_dir) -> result."""
