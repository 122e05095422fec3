"""Device selection, seeding and determinism shared by every training command."""

from __future__ import annotations

import os
import random

from .errors import BadInput, EnvironmentProblem


def resolve_device(spec: str = "auto"):  # noqa: ANN201 - returns torch.device
    """Turn `auto|cpu|cuda|cuda:N` into a torch.device, failing clearly when CUDA is absent."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise EnvironmentProblem(
                f"--device {spec} was asked for, but torch sees no CUDA device on this machine "
                f"(torch {torch.__version__}, built for CUDA: {torch.version.cuda or 'no'}).",
                hint="Use --device cpu (or auto). Training on a GPU needs a CUDA build of torch "
                "(pip install torch from the CUDA index for your driver) on a machine with an NVIDIA GPU; "
                "make install-gpu swaps only onnxruntime, not torch."
                if not torch.version.cuda
                else "Use --device cpu (or auto); this torch has CUDA but sees no GPU: check the "
                "driver (nvidia-smi) and CUDA_VISIBLE_DEVICES.",
            )
        index = int(spec.split(":", 1)[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise EnvironmentProblem(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible.",
                hint="Pick an index below that count, or check CUDA_VISIBLE_DEVICES.",
            )
        return torch.device("cuda", index)
    raise BadInput(f"--device {spec!r} is not understood.", hint="Use auto, cpu, cuda or cuda:N.")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; with `deterministic`, ask torch for bit-reproducible kernels."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    """Every RNG state a resumed run needs (tensors stay tensors; the checkpoint stores them)."""
    import numpy as np
    import torch

    np_state = np.random.get_state()
    state = {
        "python": _to_jsonable(random.getstate()),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype("int64")),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured."""
    import numpy as np
    import torch

    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype("uint32"),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _to_jsonable(obj: object) -> object:
    if isinstance(obj, tuple | list):
        return [_to_jsonable(x) for x in obj]
    return obj


def _to_tuple(obj: object) -> object:
    if isinstance(obj, list):
        return tuple(_to_tuple(x) for x in obj)
    return obj
