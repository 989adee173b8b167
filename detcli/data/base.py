"""What every dataset format shares: per-image records, the dataset that reads and transforms them,
and the data object that builds datasets and loaders. A format only turns its files into records."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image

from detcli.data.cache import decode_all, fits_in_memory, read_all
from detcli.data.checks import apply_policy, box_defects, image_defects, val_policy
from detcli.data.collate import Collate, canvas_size
from detcli.data.duplicates import Settings, without_val_duplicates
from detcli.data.sampler import EpochSampler
from detcli.data.tiles import crop_window, tile_records, tiling
from detcli.data.transforms import PAD_VALUE, image_size_of, mixup, mosaic, train_transforms, val_transforms
from detcli.data.workers import WorkerSignals, worker_count
from detcli.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class ImageRecord:
    image_id: int
    file_name: str
    height: int
    width: int
    boxes: np.ndarray  # (n, 4) x1y1x2y2, original pixels
    labels: np.ndarray  # (n,) contiguous labels
    iscrowd: np.ndarray  # (n,) bool
    area: np.ndarray = field(default=None)  # (n,) COCO area, for small/medium/large
    sources: list = field(default_factory=list)  # per box: where it is written ("line 3", "annotation id 7")
    ann_file: str = ""  # the file holding this image's annotations
    window: tuple | None = None  # a training tile (data.tile): x0, y0, x1, y1 in the annotation's pixels
    full_size: tuple | None = None  # with a window: the whole image's (width, height) in the annotation


class DetectionDataset(Dataset):
    """(image uint8 (3, h, w), target {boxes, labels} after transforms, meta) per image.

    meta holds image_id, file_name, orig_size (H, W) and the original gt for evaluation. In training,
    `mosaic` / `mixup` are the probabilities of a YOLOX mosaic of four images (on a 2 * mosaic_size
    canvas) and of mixing it with a second mosaic; `set_epoch` turns them off for the last
    `close_mosaic` epochs, and mixup off in a run shorter than `mixup_min_epochs`. `cache=True` reads every
    image file into memory once (shared with the workers);
    `cache="decoded"` keeps the images decoded instead, each at most `mosaic_size` on its longer side (no
    decoding, and no resize for a mosaic, per epoch; the boxes follow through the load scale).
    """

    def __init__(self, records: list[ImageRecord], image_dir: str | Path, transforms, train: bool,
                 mosaic: float = 0.0, mixup: float = 0.0, mosaic_size: int = 640, close_mosaic: float = 0,
                 mixup_min_epochs: float = 0,
                 cache: bool | str = False):
        self.records = records
        self.image_dir = Path(image_dir).expanduser()
        self.transforms = transforms
        self.train = train
        self.mosaic, self.mixup, self.mosaic_size, self.close_mosaic = mosaic, mixup, mosaic_size, close_mosaic
        self.mosaic_on = mosaic > 0
        self.mixup_min_epochs = mixup_min_epochs
        self.mixup_on = True  # until set_epoch knows the run's length
        self.final_phase = False
        paths = [self.image_dir / r.file_name for r in records]
        if cache == "decoded" and not fits_in_memory(records, mosaic_size):
            cache = False
        self.decoded = decode_all(paths, mosaic_size) if cache == "decoded" else None
        self.cache = read_all(paths) if cache is True else None

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Mosaic and mixup stop for the last `close_mosaic` epochs, or for that fraction of the run's
        epochs (rounded up) when it is below 1 (the loader's workers start each epoch anew, so they see
        this). Those epochs are the run's final phase, in which a criterion may change its terms
        (YOLOX's L1 term)."""
        close = self.close_mosaic if self.close_mosaic >= 1 else math.ceil(self.close_mosaic * epochs)
        self.final_phase = close > 0 and epoch >= epochs - close
        self.mosaic_on = self.mosaic > 0 and not self.final_phase
        mixup_on = epochs >= self.mixup_min_epochs  # mixup regularises long runs; a short one underfits with it
        if self.mixup > 0 and self.mixup_min_epochs > 0 and mixup_on != self.mixup_on:
            log.info("data.mixup %s from epoch %d: the run is %d epochs long as now known (%s data.mixup_min_epochs=%g)",
                     "on" if mixup_on else "off", epoch, epochs, ">=" if mixup_on else "<", self.mixup_min_epochs)
        self.mixup_on = mixup_on

    def __len__(self) -> int:
        return len(self.records)

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[float, ...]]:
        """image uint8 (3, H, W), boxes (n, 4) in its pixels, labels (n,) (crowd boxes left out in
        training), and the scale from annotation to file pixels."""
        rec = self.records[i]
        path = self.image_dir / rec.file_name
        if self.decoded is not None:
            image = self.decoded[i] if self.decoded[i] is not None else read_image(path)  # None: reported here
        else:
            image = read_image(path, self.cache[i] if self.cache is not None else None)
        if rec.window is not None:  # a tile: the window, in the file's pixels
            image = crop_window(image, rec.window, rec.full_size)
        H, W = image.shape[-2:]
        scale = np.array([W / rec.width, H / rec.height] * 2, dtype=np.float32) if rec.width else np.ones(4)
        keep = ~rec.iscrowd if self.train else np.ones(len(rec.labels), dtype=bool)
        boxes = torch.from_numpy((rec.boxes[keep] * scale).astype(np.float32))
        return image, boxes, torch.from_numpy(rec.labels[keep]), scale

    def _mosaic(self, i: int, g: torch.Generator) -> tuple:
        picks = [i] + torch.randint(len(self), (3,), generator=g).tolist()
        return mosaic([self.load(j)[:3] for j in picks], self.mosaic_size, g)

    def __getitem__(self, key: int | tuple[int, int]):
        i, sample_seed = key if isinstance(key, tuple) else (key, None)
        rec = self.records[i]
        with torch.random.fork_rng(devices=[], enabled=sample_seed is not None):
            if sample_seed is not None:
                torch.manual_seed(sample_seed)
            g = torch.Generator().manual_seed(sample_seed if sample_seed is not None else i)
            if self.train and self.mosaic_on and torch.rand((), generator=g) < self.mosaic:
                image, boxes, labels = self._mosaic(i, g)
                if torch.rand((), generator=g) < (self.mixup if self.mixup_on else 0.0):  # drawn either way
                    other = int(torch.randint(len(self), (), generator=g))
                    image, boxes, labels = mixup((image, boxes, labels), self._mosaic(other, g))
                scale = np.ones(4, dtype=np.float32)
            else:
                image, boxes, labels, scale = self.load(i)
            H, W = image.shape[-2:]
            target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(H, W)), "labels": labels}
            image, target = self.transforms(tv_tensors.Image(image), target)
        meta = {"image_id": rec.image_id, "file_name": rec.file_name, "orig_size": (H, W), "seed": sample_seed}
        if not self.train:
            meta["gt"] = {
                "boxes": torch.from_numpy((rec.boxes * scale).astype(np.float32)),
                "labels": torch.from_numpy(rec.labels),
                "iscrowd": torch.from_numpy(rec.iscrowd.astype(np.int64)),
                "area": torch.from_numpy(rec.area),
            }
        return image.as_subclass(torch.Tensor), target, meta


def read_image(path: Path, content: bytes | None = None) -> torch.Tensor:
    """RGB uint8 (3, H, W) of a file (or of its bytes, read before); a missing or undecodable file is
    a DataError naming it."""
    try:
        data = torch.frombuffer(bytearray(content if content is not None else path.read_bytes()), dtype=torch.uint8)
        return decode_image(data, mode=ImageReadMode.RGB)
    except FileNotFoundError:
        raise DataError(f"image file '{path}' does not exist.") from None
    except Exception as e:
        raise DataError(f"image file '{path}' cannot be decoded ({e}); it may be truncated or not an image.") from e




class DetectionData:
    """The data config's object: the class list, datasets and loaders. Subclasses provide
    `categories` (sorted by id, each {"id", "name"}) and `load_split(split, cat_ids) -> (records, image root)`."""

    def __init__(
        self,
        image_size=(800, 1333),
        size_divisible: int = 32,
        hflip: float = 0.5,
        hsv: list[float] | None = None,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        num_workers: int | str = "auto",
        pin_memory: bool = True,
        on_bad: str = "error",
        check_images: bool = True,
        train_transforms: list | None = None,
        val_transforms: list | None = None,
        letterbox: bool = False,
        mosaic: float = 0.0,
        mixup: float = 0.0,
        close_mosaic: float = 0,
        mixup_min_epochs: float = 0,
        multiscale: list[int] | None = None,
        cache: bool | str = False,
        duplicates: dict | None = None,
        tile: dict | None = None,
    ):
        self.tile = tiling(tile)
        self.steps = {"train": train_transforms, "val": val_transforms}
        self.hash_cache = (duplicates or {}).get("cache")  # data.duplicates (detcli/data/duplicates.py)
        self.duplicates = Settings(**{k: v for k, v in (duplicates or {}).items() if k != "cache"})
        self.letterbox = letterbox
        if multiscale is not None and (len(multiscale) != 2 or not 0 < multiscale[0] <= multiscale[1]):
            raise ConfigError(f"data.multiscale must be null or [min, max] sides with 0 < min <= max, got {multiscale}")
        self.multiscale = tuple(int(v) for v in multiscale) if multiscale is not None else None
        self.augment = {"mosaic": mosaic, "mixup": mixup, "close_mosaic": close_mosaic,
                        "mixup_min_epochs": mixup_min_epochs}
        if cache not in (False, True, "decoded"):
            raise ConfigError(f"data.cache must be false, true (the image files in memory) or decoded (the training "
                              f"images decoded in memory), got {cache!r}")
        self.cache = cache
        self.on_bad = on_bad
        self.check_images = check_images
        self.image_size = image_size_of(image_size)
        self.size_divisible = size_divisible
        self.hflip = hflip
        if hsv is not None and (len(hsv) != 3 or not 0 <= hsv[0] <= 0.5 or min(hsv) < 0):
            raise ConfigError(f"data.hsv must be null or [h, s, v] with 0 <= h <= 0.5 and s, v >= 0, got {list(hsv)}")
        self.hsv = list(hsv) if hsv is not None else None
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.workers = num_workers  # the setting: auto resolves per loader, by the device the model runs on
        self.num_workers = worker_count(num_workers)  # checked here; the count where the device is not known
        self.pin_memory = pin_memory and torch.cuda.is_available()

    categories: list[dict]

    def load_split(self, split: str, cat_ids: list[int]) -> tuple[list[ImageRecord], Path, list]:
        """(records, image root, defects found while parsing) of one split."""
        raise NotImplementedError

    def checked_split(self, split: str, cat_ids: list[int], decode: bool = False):
        """load_split plus the box checks and (data.check_images) the image checks: records, root, defects."""
        records, root, defects = self.load_split(split, cat_ids)
        flagged_boxes = {(d.image, d.box) for d in defects}
        defects = defects + [d for d in box_defects(records) if (d.image, d.box) not in flagged_boxes]
        if self.check_images or decode:
            flagged = {d.image for d in defects if d.box is None}
            defects += [d for d in image_defects(records, root, decode=decode) if d.image not in flagged]
        return records, root, defects

    @property
    def cat_ids(self) -> list[int]:
        return [int(c["id"]) for c in self.categories]

    @property
    def class_names(self) -> list[str]:
        return [str(c.get("name", c["id"])) for c in self.categories]

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    match_classes_by = "id"  # how a checkpoint's classes are found in this data: "id" (COCO) or "name"

    def label_order(self, cat_ids: list[int] | None = None, class_names: list[str] | None = None) -> list:
        """This data's category ids in label order: its own, or a checkpoint's classes found by id (COCO
        ids name the classes) or by name (VOC / YOLO ids are positions in a name list, which another copy
        of the data can sort or list differently). None marks a checkpoint class this data lacks; a class
        of the data that the checkpoint does not know is refused, listing both."""
        if self.match_classes_by == "name" and class_names is not None:
            own = dict(zip(self.class_names, self.cat_ids))
            unknown = [n for n in own if n not in class_names]
            if unknown:
                raise DataError(
                    f"the data has classes the checkpoint does not know: {unknown}. Labels are matched by name: "
                    f"the checkpoint's classes, in label order, are {list(class_names)}; this data's are "
                    f"{self.class_names}. Evaluate on data whose classes are among the checkpoint's (data.classes "
                    f"for VOC, `names` in data.yaml for YOLO), or train a model that knows them.")
            return [own.get(n) for n in class_names]
        return list(cat_ids) if cat_ids else self.cat_ids

    def dataset(self, split: str, cat_ids: list[int] | None = None,
                class_names: list[str] | None = None, augment: bool | None = None) -> DetectionDataset:
        """split 'train' or 'val'; cat_ids / class_names (a checkpoint's) fix the label order (`label_order`);
        `augment` (default: for the train split) picks the training transforms and policy, else evaluation's. Its
        `defects` are what the checks found, its `defect_note` what the val metric leaves out ("" if nothing)."""
        records, root, defects = self.checked_split(split, order := self.label_order(cat_ids, class_names))
        what = f"the {split} split"
        if split == "train" if augment is None else augment:
            records, note = apply_policy(records, defects, self.on_bad, what), ""
            if self.on_bad == "skip":
                records = without_val_duplicates(self, records, root, order)
            if self.tile is not None:
                records = tile_records(records, self.tile)
                log.info("data.tile: %d training tiles of %d px", len(records), self.tile.size)
            tf = train_transforms(self.image_size, self.hflip, self.steps["train"], self.hsv)
            side = self.image_size if isinstance(self.image_size, int) else max(self.image_size)
            cache = self.cache if self.tile is None else bool(self.cache)  # tiles: the files' bytes at most
            ds = DetectionDataset(records, root, tf, True, mosaic_size=side, cache=cache, **self.augment)
        else:
            records, note = val_policy(records, defects, self.on_bad, what)
            tf = val_transforms(self.image_size, self.steps["val"])
            # evaluation reads images at their own size: the decoded cache is the training split's
            ds = DetectionDataset(records, root, tf, False, cache=bool(self.cache))
        ds.defects, ds.defect_note = defects, note
        return ds

    def train_loader(self, dataset: DetectionDataset, seed: int, rank: int = 0, world_size: int = 1,
                     pad_value: tuple = PAD_VALUE, device=None) -> DataLoader:
        """pad_value: RGB 0-255 the batches are padded with; give the model's mean (collate.pad_value).
        device: where the model runs (data.num_workers=auto: no worker processes on a CPU)."""
        sampler = EpochSampler(len(dataset), seed, shuffle=True, rank=rank, world_size=world_size)
        base = self.image_size if isinstance(self.image_size, int) else max(self.image_size)
        multiscale = (*self.multiscale, base) if self.multiscale else None
        return self._loader(dataset, sampler, self.batch_size, drop_last=True, pad_value=pad_value,
                            multiscale=multiscale, device=device)

    def val_loader(self, dataset: DetectionDataset, rank: int = 0, world_size: int = 1,
                   pad_value: tuple = PAD_VALUE, device=None) -> DataLoader:
        sampler = EpochSampler(len(dataset), 0, shuffle=False, rank=rank, world_size=world_size)
        return self._loader(dataset, sampler, self.val_batch_size, drop_last=False, pad_value=pad_value, device=device)

    def _loader(self, dataset, sampler, batch_size: int, drop_last: bool,
                pad_value: tuple = PAD_VALUE, multiscale: tuple | None = None, device=None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=worker_count(self.workers, device=device),
            collate_fn=Collate(self.size_divisible, pad_value, canvas_size(self.image_size, self.letterbox), multiscale),
            pin_memory=self.pin_memory,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(0),  # worker seeds never draw from the global RNG
            worker_init_fn=WorkerSignals(),  # a stop signal sent to the whole job is the main process's
        )


def require(value, key: str) -> str:
    """A path-like config value that must be set; the error names the key."""
    if value in (None, "", "???"):
        raise ConfigError(f"{key} is not set: give {key}=PATH on the command line.")
    return str(Path(value).expanduser())

