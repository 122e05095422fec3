"""The corruptions a denoising autoencoder trains against (`--noise KIND:LEVEL`), in one registry.

A kind is one decorated function: its name, what its level means, the largest level allowed, an
example and one line saying what it does. Parsing, `--help`, the config's help text and the
README's table check all read this registry, so adding a kind touches this file and its test.
Torch is imported only when a corruption is applied (`import dlpipe` and `--help` stay light).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import BadInput

if TYPE_CHECKING:
    import torch

# draw(kind) -> a tensor shaped like the images: "normal" N(0, 1) or "uniform" U[0, 1) numbers
Draw = Callable[[str], "torch.Tensor"]
OFF = ("", "none", "off", "0")  # spellings of "no noise"


@dataclass(frozen=True)
class NoiseKind:
    """One corruption: `apply(x, level, draw)` maps clean images in [0, 1] to corrupted ones."""

    name: str
    level: str  # what LEVEL means, upper case in the spec: SIGMA, SHARE
    example: float
    max_level: float
    does: str  # one line: what happens to the pixels
    apply: Callable[[torch.Tensor, float, Draw], torch.Tensor]

    @property
    def spec(self) -> str:
        """The example spelling, e.g. 'gaussian:0.3'."""
        return f"{self.name}:{self.example:g}"


KINDS: dict[str, NoiseKind] = {}
DEFAULT_KIND = "gaussian"  # what a bare level ('0.3') means


def kind(
    name: str, level: str, example: float, max_level: float, does: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated `apply(x, level, draw)` as noise kind `name`."""

    def register(apply: Callable[..., Any]) -> Callable[..., Any]:
        KINDS[name] = NoiseKind(name, level, example, max_level, does, apply)
        return apply

    return register


@kind("gaussian", "SIGMA", 0.3, 5.0, "add N(0, sigma²) per pixel, clip to [0, 1]")
def _gaussian(x: torch.Tensor, level: float, draw: Draw) -> torch.Tensor:
    return (x + level * draw("normal")).clamp_(0.0, 1.0)


@kind("saltpepper", "SHARE", 0.1, 1.0, "that share of pixels set to 0 or 1 at random")
def _salt_and_pepper(x: torch.Tensor, level: float, draw: Draw) -> torch.Tensor:
    import torch

    hit = draw("uniform") < level
    salt = draw("uniform") < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


@kind("mask", "SHARE", 0.25, 1.0, "that share of pixels set to 0")
def _mask(x: torch.Tensor, level: float, draw: Draw) -> torch.Tensor:
    return x.masked_fill(draw("uniform") < level, 0.0)


def is_off(spec: str | None) -> bool:
    """True for the spellings of 'no noise' (None, '', 'none', 'off', '0')."""
    return spec is None or str(spec).strip().lower() in OFF


def spec_help() -> str:
    """The kinds as `--noise` help shows them: 'gaussian:SIGMA, saltpepper:SHARE or mask:SHARE'."""
    forms = [f"{k.name}:{k.level}" for k in KINDS.values()]
    return ", ".join(forms[:-1]) + f" or {forms[-1]}" if len(forms) > 1 else forms[0]


def parse_noise(spec: str | None) -> tuple[str, float] | None:
    """'gaussian:0.3' | '0.3' (the default kind) | None/'none' -> (kind, level), or BadInput."""
    if is_off(spec):
        return None
    name, _, level = str(spec).strip().lower().rpartition(":")
    name = name or DEFAULT_KIND
    try:
        value = float(level)
    except ValueError:
        value = -1.0
    found = KINDS.get(name)
    if found is None or not 0.0 < value <= found.max_level:
        kinds = "; ".join(f"{k.name}:{k.level} ({k.does}, at most {k.max_level:g})"
                          for k in KINDS.values())  # fmt: skip
        raise BadInput(
            f"--noise {spec!r} is not understood.",
            hint=f"Use KIND:LEVEL with a positive level, e.g. {KINDS[DEFAULT_KIND].spec}: {kinds}.",
        )
    return name, value


def add_noise(
    x: torch.Tensor, noise: tuple[str, float] | None, gen: torch.Generator | None = None
) -> torch.Tensor:
    """The corrupted input for clean images `x` in [0, 1] (same tensor when there is no noise);
    random numbers come from `gen` when given (on its device), so evaluation noise is seeded."""
    if noise is None:
        return x
    import torch

    name, level = noise
    fns = {"normal": torch.randn, "uniform": torch.rand}

    def draw(what: str) -> torch.Tensor:
        device = gen.device if gen is not None else x.device
        return fns[what](x.shape, generator=gen, device=device).to(x.device)

    return KINDS[name].apply(x, level, draw)
