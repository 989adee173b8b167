"""detcli backbones [PATTERN] [--pretrained]: the timm models matching a glob that build with
features_only, with their feature levels (stride:channels, from timm's feature_info) and whether timm
publishes pretrained weights for them; --pretrained keeps only those. Every model is built on the meta
device: nothing is downloaded and no memory is allocated. Any name listed works as backbone.name=...
(backbone.strides picks the levels by stride). Not a Hydra app: a glob and a flag.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import warnings

import torch
from torch.overrides import TorchFunctionMode

T = torch.Tensor
# in-place initialisers (torch.nn.init's and the tensor methods they and timm's own use): on a meta tensor
# they do nothing (it holds no data), yet each still goes through torch's reference implementations, most
# of the time a model takes to build on meta
INITIALISERS = {getattr(torch.nn.init, n) for n in dir(torch.nn.init) if n.endswith("_") and n[0] != "_"} | {
    T.normal_, T.uniform_, T.fill_, T.zero_, T.erfinv_, T.mul_, T.add_, T.sub_, T.div_, T.clamp_, T.copy_}


class SkipMetaInit(TorchFunctionMode):
    """Skips the in-place initialisers on meta tensors (a no-op there anyway); everything else runs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in INITIALISERS:
            tensor = args[0] if args else kwargs.get("tensor")
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


def feature_levels(name: str) -> list[tuple[int, int]]:
    """(stride, channels) of each features_only level of a timm model, built on the meta device."""
    import timm

    with warnings.catch_warnings(), torch.device("meta"), SkipMetaInit():
        warnings.simplefilter("ignore")
        info = timm.create_model(name, pretrained=False, features_only=True).feature_info
    return [(int(r), int(c)) for r, c in zip(info.reduction(), info.channels())]


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="detcli backbones", description=__doc__.split("\n\n")[0],
        epilog="Quote the pattern so the shell leaves it alone: detcli backbones 'convnext*' --pretrained")
    p.add_argument("pattern", nargs="?", default="*",
                   help="a timm model-name glob (default: '*', every model)")
    p.add_argument("--pretrained", action="store_true", help="only models with published pretrained weights")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    import timm
    from rich.console import Console
    from rich.table import Table

    args = parse(argv)
    names = timm.list_models(args.pattern)
    if not names:
        close = difflib.get_close_matches(args.pattern.strip("*"), timm.list_models(), n=5)
        hint = f" Similar names: {', '.join(close)}." if close else ""
        print(f"detcli backbones: no timm model matches '{args.pattern}' (a glob, e.g. 'resnet*').{hint}",
              file=sys.stderr)
        return 1
    published = {n.split(".")[0] for n in timm.list_pretrained(args.pattern)}
    matched = len(names)
    if args.pretrained:
        names = [n for n in names if n in published]
    title = f"timm backbones matching '{args.pattern}'" + (", pretrained" if args.pretrained else "")
    table = Table(title=title)
    for column in ("name", "levels (stride:channels)", "pretrained"):
        table.add_column(column, no_wrap=column != "levels (stride:channels)")
    skipped = []
    for name in names:
        try:
            levels = feature_levels(name)
        except Exception as e:  # noqa: BLE001 - a model without features_only support is counted, not fatal
            skipped.append((name, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
            continue
        table.add_row(name, " ".join(f"{s}:{c}" for s, c in levels), "yes" if name in published else "no")
    Console().print(table)
    print(summary(args, matched, len(names), skipped))
    return 0


def summary(args: argparse.Namespace, matched: int, kept: int, skipped: list[tuple[str, str]]) -> str:
    text = f"{matched} timm models match '{args.pattern}'"
    if args.pretrained:
        text += f", {kept} with published pretrained weights"
    text += f"; {kept - len(skipped)} listed, {len(skipped)} skipped (cannot build features_only)"
    if skipped:
        shown = "; ".join(f"{n} ({why[:80]})" for n, why in skipped[:5])
        text += f": {shown}{' ...' if len(skipped) > 5 else ''}"
    return text + "."
