"""The typed-config loader rejects what a preset must not silently ignore."""

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from nerfhead.config import ConfigError, from_dict, load_section, parse_override, to_dict


@dataclass
class Inner:
    size: int = 8  #: cells per side
    scale: float = 1.0


@dataclass
class Outer:
    name: str = "x"
    mode: Literal["a", "b"] = "a"
    inner: Inner = field(default_factory=Inner)
    sizes: tuple[int, int] = (1, 2)
    path: Optional[str] = None


def test_nested_and_coercion():
    cfg = from_dict(Outer, {"inner": {"size": 3, "scale": 2}, "sizes": [4, 5], "mode": "b"})
    assert cfg.inner.size == 3 and cfg.inner.scale == 2.0 and isinstance(cfg.inner.scale, float)
    assert cfg.sizes == (4, 5) and cfg.mode == "b"
    assert to_dict(cfg)["sizes"] == [4, 5]


@pytest.mark.parametrize("bad, msg", [
    ({"nmae": "typo"}, "unknown field"),
    ({"inner": {"size": "big"}}, "expected an integer"),
    ({"inner": {"size": True}}, "expected an integer"),
    ({"mode": "c"}, "not one of"),
    ({"sizes": [1]}, "expected 2 items"),
])
def test_rejects_bad_values(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        from_dict(Outer, bad)


def test_load_section_with_overrides():
    cfg = load_section(Outer, {"outer": {"name": "p"}}, "outer", {"path": "/tmp/x"})
    assert cfg.name == "p" and cfg.path == "/tmp/x"


def test_parse_override():
    assert parse_override("train.lr=0.01") == ("train", "lr", 0.01)
    with pytest.raises(ConfigError):
        parse_override("lr=0.01")
