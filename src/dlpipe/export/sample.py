"""`dlpipe gan sample`: grids from a run's checkpoint (torch) or an exported ONNX generator
(onnxruntime + NumPy + Pillow only: this module never imports torch at module level, and the
ONNX path never imports it at all)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput, EnvironmentProblem
from ..plots import image_grid, save_png


def latents(n: int, nz: int, seed: int, interpolate: bool, steps: int = 8) -> np.ndarray:
    """(n, nz) float32 normal noise; with `interpolate`, rows of `steps` points on the great
    circle (slerp) between two random endpoints, n rounded up to whole rows."""
    rng = np.random.default_rng(seed)
    if not interpolate:
        return rng.standard_normal((n, nz)).astype(np.float32)
    rows = max(1, -(-n // steps))
    a = rng.standard_normal((rows, nz))
    b = rng.standard_normal((rows, nz))
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    omega = np.arccos(np.clip(cos, -1, 1))[:, None]
    out = []
    for t in np.linspace(0, 1, steps):
        so = np.sin(omega)
        safe = np.where(so < 1e-6, 1.0, so)
        w_a = np.where(so < 1e-6, 1 - t, np.sin((1 - t) * omega) / safe)
        w_b = np.where(so < 1e-6, t, np.sin(t * omega) / safe)
        out.append(w_a * a + w_b * b)
    return np.stack(out, axis=1).reshape(rows * steps, nz).astype(np.float32)


def to_pixels(images: np.ndarray) -> np.ndarray:
    """Generator output in [-1, 1] (N, C, H, W) -> uint8 pixels."""
    return np.rint((np.clip(images, -1, 1) + 1) * 127.5).astype(np.uint8)


def _onnx_session(path: Path) -> tuple[Any, str, str, int]:
    """An onnxruntime CPU session plus the input name, output name and latent size."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise EnvironmentProblem(
            "Sampling from an ONNX file needs onnxruntime.", hint="Run `make install`."
        ) from None
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BadInput(
            f"{path} could not be loaded by onnxruntime ({exc}).",
            hint="Pass an ONNX generator written by `dlpipe export`, or a run folder.",
        ) from None
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    names = [i.name for i in inputs]
    if "z" not in names or "image" not in [o.name for o in outputs]:
        raise BadInput(
            f"{path} is not a generator: expected input 'z' and output 'image', found inputs "
            f"{names} and outputs {[o.name for o in outputs]}.",
            hint="Export the GAN run with `dlpipe export RUN`; classifiers cannot be sampled.",
        )
    props = sess.get_modelmeta().custom_metadata_map or {}
    shape = inputs[names.index("z")].shape
    nz = props.get("latent_size") or (shape[1] if len(shape) == 2 else None)
    if not isinstance(nz, int | str) or not str(nz).isdigit():
        raise BadInput(
            f"{path}: the latent size is unknown (input 'z' has shape {shape} and there is no "
            "'latent_size' metadata).",
            hint="Export with a fixed second dimension of 'z', or add metadata latent_size.",
        )
    return sess, "z", "image", int(nz)


def sample_onnx(path: Path, z_fn: Any, batch: int = 64) -> np.ndarray:
    """Generator output (N, C, H, W) from an ONNX file, batch by batch, via onnxruntime."""
    sess, inp, outp, nz = _onnx_session(path)
    z = z_fn(nz)
    parts = [sess.run([outp], {inp: z[i : i + batch]})[0] for i in range(0, len(z), batch)]
    return np.concatenate(parts)


def _checkpoint_path(ref: Path) -> Path:
    from ..runs import checkpoint_of

    return checkpoint_of(ref)


def sample_checkpoint(path: Path, z_fn: Any, batch: int = 64) -> np.ndarray:
    """Generator output (N, C, H, W) from a run folder or checkpoint (eval-mode exported G)."""
    import torch

    from ..checkpoint import load_checkpoint
    from ..models import build_from_meta

    ck = load_checkpoint(_checkpoint_path(path))
    if ck.meta.get("kind") != "generator":
        raise BadInput(
            f"{path} holds a {ck.meta.get('kind')!r} checkpoint, not a generator.",
            hint="Pass a run folder of `dlpipe gan train`.",
        )
    g = build_from_meta(ck.meta)
    g.load_state_dict(ck.weights[ck.meta["export_group"]])
    z = torch.from_numpy(z_fn(int(ck.meta["arch"]["nz"])))
    with torch.no_grad():
        return torch.cat([g(z[i : i + batch]) for i in range(0, len(z), batch)]).numpy()


def sample_grid(
    ref: str | Path, n: int, out: str | Path, seed: int = 0, interpolate: bool = False
) -> dict[str, Any]:
    """Write a PNG grid of `n` samples (or interpolation rows) from a run, checkpoint or ONNX file."""
    ref = Path(ref)
    if not ref.exists():
        raise BadInput(
            f"{ref} does not exist.", hint="Pass a GAN run folder, its checkpoint, or an ONNX file."
        )
    if n < 1:
        raise BadInput(f"-n {n} must be at least 1.", hint="E.g. -n 64.")
    steps = 8

    def z_fn(nz: int) -> np.ndarray:
        return latents(n, nz, seed, interpolate, steps)

    onnx = ref.suffix.lower() == ".onnx"
    images = sample_onnx(ref, z_fn) if onnx else sample_checkpoint(ref, z_fn)
    pixels = to_pixels(images)
    grid = image_grid(pixels, nrow=steps if interpolate else max(1, int(np.ceil(np.sqrt(n)))))
    path = save_png(grid, out)
    return {
        "source": str(ref),
        "runtime": "onnxruntime" if onnx else "torch",
        "images": int(len(pixels)),
        "out": str(path),
        "image_shape": list(pixels.shape[1:]),
    }
