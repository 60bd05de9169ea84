"""Typed settings: one frozen config per model family, and one for the zero-shot text head.

`model_config` turns the keyword form that checkpoints store (`{"kind": "probex", "r_U": 32,
"zs_direction": "weight_to_text", …}`) into these, refusing a setting its family does not have.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

ZERO_SHOT_DIRECTIONS = ("text_to_weight", "weight_to_text")


@dataclass(frozen=True)
class ProbeXConfig:
    """ProbeX (the paper's): r_U probes, r_V projected rows, r_T representation width."""

    kind: ClassVar[str] = "probex"
    r_U: int = 128
    r_V: int = 128
    r_T: int = 512


@dataclass(frozen=True)
class ClassProbeConfig:
    """ProbeX with class probes (ours): each class reads the layer through `rank` probes of
    its own and projects each response with a vector of its own."""

    kind: ClassVar[str] = "probex-classes"
    rank: int = 1  # the pipeline's (`ExpertSettings.class_rank`)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"class probes need rank >= 1, not {self.rank}")


@dataclass(frozen=True)
class MultiViewConfig:
    """Multi-view ProbeX: r probes per view, proj_dim per view, optional row preprocessing."""

    kind: ClassVar[str] = "mvprobe"
    r: int = 64
    proj_dim: int = 32
    r_T: int = 512
    preprocess: str = "none"  # "none" | "center" | "l2"

    def __post_init__(self) -> None:
        if self.preprocess not in ("none", "center", "l2"):
            raise ValueError(f"unknown preprocess {self.preprocess!r}")


@dataclass(frozen=True)
class DenseConfig:
    """One linear map on the flattened layer; `bottleneck` puts a width-r_T layer before the
    head (needed for a zero-shot head)."""

    kind: ClassVar[str] = "dense"
    bottleneck: int | None = None


@dataclass(frozen=True)
class StatNNConfig:
    """An MLP on per-layer weight statistics."""

    kind: ClassVar[str] = "statnn"
    hidden: int = 64


ModelConfig = ProbeXConfig | ClassProbeConfig | MultiViewConfig | DenseConfig | StatNNConfig
FAMILIES: dict[str, type[ModelConfig]] = {
    c.kind: c for c in (ProbeXConfig, ClassProbeConfig, MultiViewConfig, DenseConfig, StatNNConfig)
}


@dataclass(frozen=True)
class TextHeadConfig:
    """The zero-shot head (see `ZeroShotHead`): temperature, whether it learns, direction."""

    scale: float = 10.0
    learn_scale: bool = True
    direction: str = "text_to_weight"  # or "weight_to_text": one shared text space

    def __post_init__(self) -> None:
        if self.direction not in ZERO_SHOT_DIRECTIONS:
            raise ValueError(f"unknown zero-shot direction {self.direction!r}")

    def as_keywords(self) -> dict[str, Any]:
        """The settings that differ from the defaults, spelled zs_<name>."""
        default = TextHeadConfig()
        return {f"zs_{k}": v for k, v in asdict(self).items() if getattr(default, k) != v}


def model_config(kind: str, **settings: Any) -> tuple[ModelConfig, TextHeadConfig]:
    """The family's config and the text head's from keyword settings (zs_scale,
    zs_learn_scale and zs_direction go to the head)."""
    if kind not in FAMILIES:
        raise ValueError(f"unknown model kind {kind!r}; choose from {', '.join(FAMILIES)}")
    family = FAMILIES[kind]
    head = {k[3:]: settings.pop(k) for k in list(settings) if k.startswith("zs_")}
    known = {f.name for f in fields(family)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(
            f"{kind} has no setting {', '.join(unknown)}; it takes {', '.join(sorted(known))}"
        )
    unknown_head = sorted(set(head) - {f.name for f in fields(TextHeadConfig)})
    if unknown_head:
        raise ValueError(f"the zero-shot head has no setting zs_{', zs_'.join(unknown_head)}")
    return family(**settings), TextHeadConfig(**head)
