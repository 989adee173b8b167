"""Weights into a model of possibly other classes: every tensor by name, the class rows by class name.

Where the model's classes and the weights' differ, the rows of the classes both have are kept (a dataset of
`person` and `car` keeps COCO's person and car rows), the others stay as the model initialised them (the
prior-probability bias of a dense head), a background row is always taken. Any other shape mismatch is refused
with its key named. What was loaded, re-initialised and skipped is logged, one line each, and returned.

Naming: C = classes of the model, S = classes of the weights.
"""

from __future__ import annotations

import logging

from torch import Tensor, nn

from detcli.errors import CheckpointError
from detcli.weights.source import Weights

log = logging.getLogger("detcli")


def transfer(model: nn.Module, weights: Weights, class_names: list[str]) -> dict:
    """Loads `weights` into `model` (whose classes are `class_names`); returns the summary it logs:
    loaded / missing / skipped keys, kept / reinitialised classes."""
    layout = {f"head.{k}": v for k, v in model.head.class_layout().items()}
    target = model.state_dict()
    source_names = weights.class_names
    if source_names is None:  # a bare state dict: its rows are the model's classes when the counts agree
        source_names = class_names if _rows_fit(weights.state, layout, len(class_names)) else []
    new, missing = {}, []
    for key, value in target.items():
        if key.endswith("num_batches_tracked"):
            continue
        src = weights.state.get(key)
        if src is None:
            missing.append(key)
        elif key in layout and not source_names:  # a bare state dict of another class count: rows re-initialised
            continue
        elif key in layout:
            new[key] = move_rows(value, src, layout[key], source_names, class_names, key, weights.source)
        elif src.shape != value.shape:
            raise CheckpointError(
                f"weights '{weights.source}': '{key}' has shape {tuple(src.shape)} there and {tuple(value.shape)} in "
                f"this model: they are different networks (backbone, neck or head settings differ)."
            )
        else:
            new[key] = src
    if not new:
        raise CheckpointError(f"weights '{weights.source}' fit none of this model's parameters (its keys: "
                              f"{list(weights.state)[:4]}, the model's: {list(target)[:4]}).")
    model.load_state_dict(new, strict=False)
    skipped = sorted(k for k in weights.state if k not in target and not k.endswith("num_batches_tracked"))
    index = {n: i for i, n in reversed(list(enumerate(source_names)))}
    summary = {"source": weights.source, "loaded": len(new), "missing": missing, "skipped": skipped,
               "kept_classes": [n for n in class_names if n in index],
               "reinitialised_classes": [n for n in class_names if n not in index]}
    _log(summary, len(target))
    return summary


def move_rows(target: Tensor, source: Tensor, rows: tuple[int, int], source_names: list[str],
              class_names: list[str], key: str, where: str) -> Tensor:
    """A class-indexed tensor: target (C * per + extra, ...) with the rows of the classes `source` (S * per +
    extra, ...) has too, by name, and its `extra` trailing rows (a background)."""
    per, extra = rows
    if source.shape[1:] != target.shape[1:] or source.shape[0] != len(source_names) * per + extra:
        raise CheckpointError(f"weights '{where}': '{key}' has shape {tuple(source.shape)} there and "
                              f"{tuple(target.shape)} in this model ({len(source_names)} and {len(class_names)} "
                              f"classes): they are different networks.")
    out = target.clone()
    index = {n: i for i, n in reversed(list(enumerate(source_names)))}  # the first row of a repeated name
    for c, name in enumerate(class_names):
        if name in index:
            s = index[name]
            out[c * per:(c + 1) * per] = source[s * per:(s + 1) * per]
    if extra:
        out[-extra:] = source[-extra:]
    return out


def _rows_fit(state: dict, layout: dict, classes: int) -> bool:
    return all(k in state and state[k].shape[0] == classes * per + extra for k, (per, extra) in layout.items())


def _log(summary: dict, total: int) -> None:
    log.info("weights %s: loaded %d of the model's %d tensors", summary["source"], summary["loaded"], total)
    log.info("weights: class rows kept for %d classes %s, re-initialised for %d %s",
             len(summary["kept_classes"]), _short(summary["kept_classes"]),
             len(summary["reinitialised_classes"]), _short(summary["reinitialised_classes"]))
    log.info("weights: not in the weights (left as initialised): %d %s", len(summary["missing"]),
             _short(summary["missing"]))
    log.info("weights: skipped (not in this model): %d %s", len(summary["skipped"]), _short(summary["skipped"]))


def _short(items: list[str], n: int = 6) -> str:
    return "[" + ", ".join(items[:n]) + (f", ... {len(items) - n} more" if len(items) > n else "") + "]"


