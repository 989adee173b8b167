"""The closest duplicate pairs of a data check as one figure: a row per pair, the two images side by side with
their split, file and Hamming distance (duplicates.png)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from detcli.data.base import read_image
from detcli.visualization.plots import _pyplot


def duplicate_pairs(pairs: list[dict], path: Path, limit: int = 8) -> Path | None:
    """The first `limit` pairs (data check sorts them cross-split first, closest first); None when none."""
    pairs = pairs[:limit]
    if not pairs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(pairs), 2, figsize=(7, 3.2 * len(pairs)), squeeze=False)
    for row, pair in zip(axes, pairs):
        for ax, side in zip(row, ("a", "b")):
            file = Path(pair[side]["file"])
            with contextlib.suppress(Exception):  # an unreadable file is drawn as its name alone
                ax.imshow(read_image(file).permute(1, 2, 0).numpy())
            ax.set_title(f"{pair[side]['split']}: {file.name}\n{pair['kind']}, distance {pair['distance']}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
