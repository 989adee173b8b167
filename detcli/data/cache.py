"""data.cache: the training images held in memory, as their files' bytes (`true`) or decoded and shrunk to the
training size (`decoded`), read in parallel; `fits_in_memory` checks a decoded cache against the memory free."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from detcli.errors import DataError

log = logging.getLogger("detcli.data.base")


def read_all(paths: list[Path]) -> list[bytes | None]:
    """Every file's bytes, read in parallel, once per file (the tiles of an image share them; a missing file stays
    None and is reported when used)."""
    from concurrent.futures import ThreadPoolExecutor

    def read(p: Path) -> bytes | None:
        try:
            return p.read_bytes()
        except OSError:
            return None

    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(8) as pool:
        content = dict(zip(unique, pool.map(read, unique)))
    return [content[p] for p in paths]


def fits_in_memory(records: list, side: int) -> bool:
    """Whether data.cache=decoded takes at most half the memory available now; if not, a warning says so
    and the images are read from disk (as ultralytics' cache=ram does)."""
    need = sum(3 * r.height * r.width * min(1.0, side / max(r.height, r.width, 1)) ** 2 for r in records)
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no sysconf: nothing to check against
        return True
    if need > available / 2:
        log.warning("data.cache=decoded would take about %.1f GiB for %d training images at %d px, more than half "
                    "of the %.1f GiB available: the images are read from disk instead", need / 2**30, len(records),
                    side, available / 2**30)
        return False
    return True


def decode_all(paths: list[Path], side: int) -> list[torch.Tensor | None]:
    """Every image decoded (in parallel), shrunk to at most `side` on its longer side; an unreadable one
    stays None (read_image reports it when the image is used)."""
    from concurrent.futures import ThreadPoolExecutor

    from torchvision.transforms.v2 import functional as F

    from detcli.data.base import read_image  # base imports this module

    def decode(p: Path) -> torch.Tensor | None:
        try:
            image = read_image(p)
        except DataError:
            return None
        h, w = image.shape[-2:]
        if max(h, w) > side:
            scale = side / max(h, w)
            image = F.resize(image, [max(1, round(h * scale)), max(1, round(w * scale))], antialias=True)
        return image.clone()

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(decode, paths))
