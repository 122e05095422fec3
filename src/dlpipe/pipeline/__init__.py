"""Pipelines: YAML files of stages, each one dlpipe command with the CLI's own options."""

from .runner import run_pipeline
from .spec import Pipeline, Stage, load_pipeline

__all__ = ["Pipeline", "Stage", "load_pipeline", "run_pipeline"]
