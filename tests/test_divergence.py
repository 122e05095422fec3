"""A learning rate so large that the optimizer's update overflows float32 stops every training
command with the divergence paragraph (exit 1), not a RuntimeError traceback from inside Adam."""

from __future__ import annotations

import pytest

TINY = ["--data", "digits", "--limit", "64", "--batch-size", "32", "--device", "cpu",
        "--epochs", "1", "--lr", "1e38"]  # fmt: skip


@pytest.mark.parametrize(
    "command",
    [
        ["finetune", "--backbone", "mnist_cnn", "--weights", "none", "--image-size", "8"],
        ["finetune", "--backbone", "mnist_cnn", "--weights", "none", "--image-size", "8",
         "--optimizer", "lbfgs", "--scheduler", "none"],
        ["finetune", "--backbone", "mnist_cnn", "--weights", "none", "--image-size", "8",
         "--optimizer", "sgd", "--scheduler", "none"],
        ["ae", "train"],
    ],
    ids=["finetune-adamw", "finetune-lbfgs", "finetune-sgd-nan", "ae"],
)  # fmt: skip
def test_overflowing_learning_rate_is_a_clear_divergence(cli, command) -> None:
    res = cli(*command, *TINY)
    text = " ".join(res.output.split())
    assert res.exit_code == 1, text
    assert "Training diverged" in text and "Lower --lr" in text, text
    assert "Traceback" not in text
