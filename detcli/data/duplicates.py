"""Duplicates a data set should not have: the same image twice, within a split or across train / val / test
(leakage: a val image the model trained on inflates the metric), found by perceptual hash (imagehash's pHash or
dHash, within a Hamming distance), and the same box twice in one image (same class, IoU >= 0.95).

Hashing reads each file once (its bytes give the exact-copy digest, its pixels the perceptual hash; a JPEG is
decoded at reduced scale through PIL's draft mode, which is all a 32 x 32 hash needs), in threads, and caches
each file's result under its path, size and modification time: a second check reads nothing again. The pairs
come from one batched Hamming-distance pass over the packed hashes.

Naming: N = images, W = 64-bit words per hash.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detcli.errors import ConfigError, DataError

log = logging.getLogger("detcli")
METHODS = ("phash", "dhash")
BOX_IOU = 0.95  # two boxes of one class overlapping this much in one image are one box labelled twice


@dataclass(frozen=True)
class Settings:
    """data.duplicates: the hash, its side (bits = hash_size^2) and the largest Hamming distance of a pair."""

    method: str = "phash"
    hash_size: int = 16
    max_distance: int = 20

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"data.duplicates.method must be one of {', '.join(METHODS)}, got '{self.method}'.")
        if self.hash_size < 4 or self.hash_size**2 % 64:
            raise ConfigError(f"data.duplicates.hash_size must be 8, 16, ... (hash_size^2 a multiple of 64 bits), "
                              f"got {self.hash_size}.")


@dataclass
class Hashes:
    """Per image: the packed perceptual hash (N, W) uint64 and the sha1 of its bytes ("" when unreadable)."""

    bits: np.ndarray
    digests: list[str]
    seconds: float
    read: int  # images hashed now (the rest came from the cache)


def hash_files(paths: list[Path], settings: Settings, cache_dir: str | Path | None = None,
               workers: int = 8) -> Hashes:
    """Perceptual hash and byte digest of every file, through the cache in `cache_dir` (None: no cache)."""
    start = time.perf_counter()
    cache_file = Path(cache_dir).expanduser() / f"{settings.method}{settings.hash_size}.json" if cache_dir else None
    cache = _read_cache(cache_file)
    keys = [_key(p) for p in paths]
    todo = [i for i, k in enumerate(keys) if k not in cache]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i, value in zip(todo, pool.map(lambda i: _hash_one(paths[i], settings), todo)):
            cache[keys[i]] = value
    if cache_file is not None and todo:
        _write_cache(cache_file, cache)
    W = settings.hash_size**2 // 64
    raw = b"".join(bytes.fromhex(cache[k][0]) if cache[k][0] else bytes(8 * W) for k in keys)  # unreadable: 0
    packed = np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(keys), W)  # (N, W)
    return Hashes(packed, [cache[k][1] for k in keys], time.perf_counter() - start, len(todo))


def close_pairs(bits: np.ndarray, max_distance: int, words: int = 8_000_000) -> list[tuple[int, int, int]]:
    """(i, j, Hamming distance) of every pair i < j of hashes (N, W) within `max_distance` bits, sorted: every
    pair compared in chunks of rows (about `words` 64-bit words of memory at a time) for a small set, else the
    candidates of the multi-index search (`_candidates`) alone."""
    n = len(bits)
    if n * n * bits.shape[1] <= 2_000_000_000 or max_distance + 1 > bits.shape[1] * 64 // 4:
        out = []
        chunk = max(1, words // max(1, bits.size))
        for start in range(0, n, chunk):
            rows = bits[start:start + chunk]  # (c, W)
            dist = _popcount(rows[:, None, :] ^ bits[None, :, :]).sum(-1)  # (c, N)
            i, j = np.nonzero(dist <= max_distance)
            keep = j > i + start
            out += [(int(a) + start, int(b), int(dist[a, b])) for a, b in zip(i[keep], j[keep])]
        return out
    i, j = _candidates(bits, max_distance)  # (P,), (P,)
    out = []
    for start in range(0, len(i), 1_000_000):  # the candidates' distances, a million at a time
        a, b = i[start:start + 1_000_000], j[start:start + 1_000_000]
        dist = _popcount(bits[a] ^ bits[b]).sum(-1)  # (p,)
        keep = dist <= max_distance
        out += [(int(x), int(y), int(d)) for x, y, d in zip(a[keep], b[keep], dist[keep])]
    return out


def _candidates(bits: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs i < j that agree on at least one of max_distance + 1 blocks of the hash bits: by the pigeonhole
    principle every pair within max_distance does (multi-index hashing), so only these need comparing."""
    n = len(bits)
    flat = np.unpackbits(bits.astype(">u8").view(np.uint8), axis=1)  # (N, W * 64) bits
    pairs = []
    for block in np.array_split(np.arange(flat.shape[1]), max_distance + 1):
        value = flat[:, block].astype(np.int64) @ (1 << np.arange(len(block), dtype=np.int64))  # (N,)
        order = np.argsort(value, kind="stable")  # (N,)
        same = value[order]
        for step in range(1, n):  # equal values sit in runs: pair each with the ones `step` after it
            match = same[step:] == same[:-step]
            if not match.any():
                break
            a, b = order[:-step][match], order[step:][match]
            pairs.append(np.stack([np.minimum(a, b), np.maximum(a, b)], 1))
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    unique = np.unique(np.concatenate(pairs) @ np.array([n, 1], dtype=np.int64))  # (P,) as i * N + j
    return unique // n, unique % n


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits per uint64 word (numpy >= 2 has it built in)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    return np.unpackbits(words[..., None].view(np.uint8), axis=-1).sum(-1)


def find_duplicates(splits: dict[str, list[Path]], settings: Settings, cache_dir=None, workers: int = 8) -> dict:
    """Duplicate images within and across splits: {"pairs": [...], "counts": {"train": n, "train-val": n, ...},
    "images", "seconds", "rate"}; a pair's "kind" is exact (the same bytes) or near (within max_distance)."""
    names = [(s, p) for s, paths in splits.items() for p in paths]
    hashes = hash_files([p for _, p in names], settings, cache_dir, workers)
    readable = np.flatnonzero([bool(d) for d in hashes.digests])  # unreadable files: the image checks' to report
    pairs, counts = [], {}
    for a, b, d in close_pairs(hashes.bits[readable], settings.max_distance):
        i, j = int(readable[a]), int(readable[b])
        (sa, fa), (sb, fb) = names[i], names[j]
        where = sa if sa == sb else "-".join(sorted((sa, sb), key=list(splits).index))
        counts[where] = counts.get(where, 0) + 1
        kind = "exact" if hashes.digests[i] == hashes.digests[j] else "near"
        pairs.append({"splits": where, "a": {"split": sa, "file": str(fa)}, "b": {"split": sb, "file": str(fb)},
                      "distance": d, "kind": kind})
    pairs.sort(key=lambda p: (p["a"]["split"] == p["b"]["split"], p["distance"]))  # cross-split first, closest first
    rate = hashes.read / hashes.seconds if hashes.read else None
    return {"method": settings.method, "hash_size": settings.hash_size, "max_distance": settings.max_distance,
            "images": len(names), "hashed_now": hashes.read, "seconds": round(hashes.seconds, 2),
            "images_per_s": round(rate, 1) if rate else None, "counts": counts, "pairs": pairs}


def duplicate_boxes(records: list, names: list[str], iou: float = BOX_IOU) -> list[dict]:
    """Boxes labelled twice: the same class, IoU >= `iou`, in one image; one entry per pair."""
    import torch
    from torchvision.ops import box_iou

    out = []
    for r in records:
        if len(r.labels) < 2:
            continue
        boxes = torch.as_tensor(r.boxes, dtype=torch.float32)  # (M, 4)
        same = torch.as_tensor(r.labels)[:, None] == torch.as_tensor(r.labels)[None]  # (M, M)
        overlap = box_iou(boxes, boxes) * same  # (M, M)
        for a, b in torch.nonzero(torch.triu(overlap >= iou, diagonal=1)).tolist():
            out.append({"file": r.file_name, "boxes": [a, b], "class": names[int(r.labels[a])],
                        "iou": round(float(overlap[a, b]), 4)})
    return out


def _hash_one(path: Path, settings: Settings) -> tuple[str, str]:
    """(hex perceptual hash, sha1 of the bytes), or ("", "") for a file that cannot be read or decoded (the
    image checks report those)."""
    import imagehash
    from PIL import Image

    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            side = settings.hash_size * 4
            im.draft("RGB", (side * 2, side * 2))  # JPEG: decode at 1/2 .. 1/8 scale; others: no effect
            value = getattr(imagehash, settings.method)(im.convert("RGB"), hash_size=settings.hash_size)
        return str(value), hashlib.sha1(data).hexdigest()
    except Exception:  # noqa: BLE001 - unreadable files are the image checks' to report
        return "", ""


def _key(path: Path) -> str:
    try:
        st = path.stat()
        return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        return f"{path}|missing"


def _read_cache(path: Path | None) -> dict:
    if path is None or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("data.duplicates: the hash cache '%s' is unreadable; hashing again", path)
        return {}


def _write_cache(path: Path, cache: dict) -> None:
    """Written to a temporary file of this process and renamed: a crash never leaves half a cache, processes
    writing at once (DDP ranks) each leave a whole one; a folder that cannot be written is a warning."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(cache))
        tmp.replace(path)
    except OSError as e:
        log.warning("data.duplicates.cache: could not write '%s' (%s); the hashes are not cached", path, e)


def without_val_duplicates(data, records: list, root: Path, label_order: list) -> list:
    """data.on_bad=skip: the train records of `data` (a DetectionData) minus the images that duplicate a val
    image (data.duplicates; never the val side), said in the log."""
    try:
        val_records, val_root, _ = data.load_split("val", label_order)
    except (ConfigError, DataError, OSError):  # no val split to leak into
        return records
    found = find_duplicates({"train": [root / r.file_name for r in records],
                             "val": [val_root / r.file_name for r in val_records]},
                            data.duplicates, data.hash_cache, workers=4)
    cross = [p for p in found["pairs"] if p["splits"] == "train-val"]
    # a file that is in both splits (val_ann pointing at the training set, an overfit check) is left alone
    shared = {p["a"]["file"] for p in cross if Path(p["a"]["file"]).resolve() == Path(p["b"]["file"]).resolve()}
    leaked = {p["a"]["file"] for p in cross} - shared
    if shared:
        log.warning("data.duplicates: %d train images are files of the val split too (train and val share them): "
                    "kept; `detcli data check` lists them", len(shared))
    if leaked:
        log.warning("data.on_bad=skip: left out %d train images that duplicate a val image (%s distance <= %d): %s",
                    len(leaked), data.duplicates.method, data.duplicates.max_distance,
                    ", ".join(sorted(Path(f).name for f in leaked)[:10]) + (" ..." if len(leaked) > 10 else ""))
    return [r for r in records if str(root / r.file_name) not in leaked]
