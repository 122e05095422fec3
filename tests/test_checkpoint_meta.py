"""One typed description for every checkpoint: what each training command writes parses back, and
a header of the wrong shape is a clear BadInput, never a KeyError deep inside export."""

from __future__ import annotations

import pytest

import dlpipe
from dlpipe.checkpoint import read_meta
from dlpipe.checkpoint_meta import CheckpointMeta
from dlpipe.errors import BadInput


def test_every_command_writes_a_meta_that_parses_back(monkeypatch) -> None:
    monkeypatch.setenv("DLPIPE_OFFLINE", "1")
    tiny = dict(data="digits", limit=48, batch_size=16, device="cpu", epochs=1)
    runs = [
        dlpipe.train_ae(**tiny, width=4, latent=4),
        dlpipe.train_gan(**tiny, fd_every=0, nz=8, ngf=8, ndf=8),
        dlpipe.finetune(**tiny, backbone="mnist_cnn", weights="none", image_size=8, eval_limit=20),
    ]
    kinds = []
    for r in runs:
        meta = read_meta(f"{r['run_dir']}/checkpoints/last.safetensors")
        parsed = CheckpointMeta.from_dict(meta)
        assert parsed.to_dict() == meta  # nothing lost, nothing added
        kinds.append(parsed.kind)
    assert kinds == ["autoencoder", "generator", "classifier"]


@pytest.mark.parametrize(
    ("meta", "words"),
    [
        ([1, 2], "not a mapping"),
        ({"command": "gan", "kind": "generator", "export_group": "generator"}, "'arch'"),
        ({"command": "gan", "kind": "generator", "arch": "x", "export_group": "g"}, "'arch'"),
        ({"command": "ae", "kind": 3, "arch": {}, "export_group": "model"}, "'kind'"),
    ],
)
def test_a_header_of_the_wrong_shape_is_refused_clearly(meta, words) -> None:
    with pytest.raises(BadInput, match=words):
        CheckpointMeta.from_dict(meta, "c.safetensors")
