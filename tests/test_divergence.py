"""A learning rate so large that training blows up stops every training command with the
divergence paragraph (exit 1), not a traceback from inside the optimizer; rates that cannot even be
represented through Adam's update (over 1e30) are refused before anything runs (exit 2)."""

from __future__ import annotations

import pytest

import dlpipe
from dlpipe.errors import BadInput

TINY = ["--data", "digits", "--limit", "64", "--batch-size", "32", "--device", "cpu",
        "--epochs", "1", "--lr", "1e30"]  # fmt: skip


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


def test_a_rate_that_overflows_float32_is_refused_up_front(cli) -> None:
    res = cli("ae", "train", *TINY[:-1], "1e38")
    assert res.exit_code == 2 and "--lr 1e+38 is outside its usable range" in res.output
    with pytest.raises(BadInput, match="usable range"):
        dlpipe.train_ae(data="digits", lr=1e38)
