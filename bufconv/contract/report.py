"""What a check found: `Finding`s, the image chain's links, and the `CheckReport` that holds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..pixelmap import PixelMap

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Finding:
    """One way the data does not fit the config: a stable code, "error" or "warning", and what to do."""

    code: str
    severity: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    """Machine-readable context (key, axis, fraction, expected, found), for `--json`."""

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "message": self.message, **self.details}


@dataclass(frozen=True)
class ChainLink:
    """One path into one network for one image key: the map from the stored pixel to its first layer."""

    path: str
    """"offline", "online", "actor", or "classifier training"."""
    network: str
    """"policy" or "reward classifier"."""
    key: str
    first_layer: PixelMap
    encoder_input: PixelMap | None = None
    """What the encoder's forward receives (the guard's map), where the encoder normalises its
    input itself before its first layer; None when that is the first layer's map."""
    steps: tuple[str, ...] = ()
    """The steps of the map, in order, for messages."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "network": self.network, "key": self.key}
        out.update(self.first_layer.to_json())
        if self.encoder_input is not None:
            out["encoder_input"] = self.encoder_input.to_json()
        out["steps"] = list(self.steps)
        return out


@dataclass
class CheckReport:
    """The findings of one check. `ok` is true when none is an error (warnings allowed)."""

    source: str
    kind: str
    config: str
    checked: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    chain: list[ChainLink] = field(default_factory=list)
    """What each network's first layer sees, per path and image key (SPEC section 14)."""

    @property
    def ok(self) -> bool:
        return not any(f.severity == ERROR for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    def add(self, code: str, message: str, severity: str = ERROR, **details: Any) -> None:
        self.findings.append(Finding(code, severity, message, details))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source": self.source,
            "kind": self.kind,
            "config": self.config,
            "checked": self.checked,
            "findings": [f.to_json() for f in self.findings],
            "chain": [link.to_json() for link in self.chain],
        }

    def chain_lines(self) -> list[str]:
        """The chain as text, one line per path and map (keys with the same map on one line)."""
        lines: list[str] = []
        grouped: dict[tuple[str, str, str, str], list[str]] = {}
        for link in self.chain:
            inner = "" if link.encoder_input is None else f" (the encoder's input: {link.encoder_input.describe()})"
            grouped.setdefault((link.path, link.network, link.first_layer.describe(), inner), []).append(link.key)
        for (path, network, text, inner), keys in grouped.items():
            lines.append(f"{path} -> {network} [{', '.join(keys)}]: {text}{inner}")
        return lines


