"""The shipped config folder (`config_dir`), and what is special about a run's config: its keys flattened to dotted paths, compared with the defaults
(`detcli train` composed with no overrides) or with the other runs of a comparison. Hydra's own keys are
left out. A key one side lacks shows as MISSING."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

MISSING = "-"  # the value shown for a key a config does not have


def config_dir() -> str:
    """The shipped configs: detcli/configs in an installed wheel, the repo's configs/ in a source checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "configs", package.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"detcli's configs are missing next to {package}; reinstall detcli.")


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, Any]:
    """{"trainer.optimizer.lr": 0.01, ...}: dotted key -> leaf value (lists stay whole), hydra keys dropped."""
    if isinstance(cfg, DictConfig):
        cfg = _container(cfg)
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        if full == "hydra":
            continue
        if isinstance(value, dict) and value:
            out.update(flatten(value, full + "."))
        else:
            out[full] = value
    return out


def _container(cfg: DictConfig) -> dict:
    """The config as plain data, interpolations resolved where they can be (Hydra's ${now:} cannot, outside
    a Hydra app: then every value is kept as written)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - an unresolvable interpolation: compare the text as written
        return OmegaConf.to_container(cfg, resolve=False)


def default_config(name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """The shipped config `name` with `overrides` (none: its defaults), composed with Hydra's compose API (inside
    a running Hydra app through its own initialisation, else on the shipped config folder)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name=name, overrides=list(overrides or []))
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides or []))


def config_diff(defaults: DictConfig | dict, cfg: DictConfig | dict) -> list[tuple[str, Any, Any]]:
    """(key, default, this run's value) for every key whose value differs, sorted by key."""
    a, b = flatten(defaults), flatten(cfg)
    return [(k, a.get(k, MISSING), b.get(k, MISSING)) for k in sorted(set(a) | set(b))
            if a.get(k, MISSING) != b.get(k, MISSING)]


def differing_keys(configs: list[dict]) -> list[str]:
    """The keys whose value is not the same in every config (a key some lack counts as differing)."""
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    return [k for k in keys if len({repr(f.get(k, MISSING)) for f in flat}) > 1]


def short(value: Any, width: int = 40) -> str:
    """A value as one line of at most `width` characters."""
    text = "null" if value is None else str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def diff_table(rows: list[tuple[str, Any, Any]], limit: int = 40) -> str:
    """Plain-text lines `key  default -> value` (for a log), at most `limit` of them and a count of the rest."""
    if not rows:
        return "config: the defaults (no key differs from `detcli train`'s)"
    width = max(len(k) for k, _, _ in rows[:limit])
    lines = [f"config: {len(rows)} keys differ from the defaults (default -> this run)"]
    lines += [f"  {k:<{width}}  {short(a)} -> {short(b)}" for k, a, b in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"  ... and {len(rows) - limit} more (config.yaml holds them all)")
    return "\n".join(lines)
