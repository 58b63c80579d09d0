"""``LlavaDataset``: LLaVA-format records checked and tokenized up front, images loaded per item.

Construction reads every record, checks that every image file exists and tokenizes every
conversation (text only, no pixels), so a bad record, a sample that does not fit the context
or a template the tokenizer disagrees with fails in the first minute of a run, not hours in.
The token lengths it measures feed the length-grouped sampler. Token ids are not kept (they
would cost gigabytes on LLaVA-665K); ``__getitem__`` tokenizes again, which is cheap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

from torch.utils.data import Dataset
from tqdm.auto import tqdm

from graft.data.records import Record, parse_record
from graft.processing import (
    EncodedSample,
    GraftProcessor,
    ImageLoadError,
    SampleTooLongError,
    TokenizationMismatchError,
    load_image,
)
from graft.prompts import ImageMarkerError
from graft.record_files import RecordError, iter_records

logger = logging.getLogger(__name__)

#: exceptions a single sample can raise while tokenized, and the reason they are counted under
_ENCODE_ERRORS: dict[type[Exception], str] = {
    SampleTooLongError: "too_long",
    TokenizationMismatchError: "tokenization_mismatch",
    ImageMarkerError: "image_marker_mismatch",
}


@dataclass
class TrainSample:
    id: str
    encoded: EncodedSample
    #: content key per image (file bytes + preprocessing), for the vision feature cache
    image_keys: list[str]


def preprocessing_signature(processor: GraftProcessor) -> str:
    """A short hash of everything that turns an image file into pixel values."""
    settings = {
        "image_processor": processor.image_processor.to_dict(),
        "pad_to_square": processor.pad_to_square,
    }
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class LlavaDataset(Dataset):
    def __init__(
        self,
        paths: str | os.PathLike | list[str | os.PathLike],
        image_root: str | os.PathLike,
        processor: GraftProcessor,
        skip_bad: bool = False,
        max_length: int | None = None,
        limit: int | None = None,
    ) -> None:
        """``limit``: read only the first ``limit`` usable records (a quick look, a diagnostic);
        the rest of the files is not read or tokenized."""
        self.paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        self.image_root = str(image_root)
        self.processor = processor
        self.skip_bad = skip_bad
        self.max_length = max_length
        self._signature = preprocessing_signature(processor)
        #: set to False once every image's vision features are cached: items then skip pixels
        self.load_pixels = True
        self.skipped: dict[str, int] = {}
        self.records: list[Record] = []
        self.lengths: list[int] = []
        self.has_image: list[bool] = []
        #: which of ``paths`` each sample came from (for per-batch mixing of sources)
        self.source_index: list[int] = []
        self._file_hashes: dict[str, tuple[tuple[int, int, int], str]] = {}

        read_from: list[int] = []
        for source, path in enumerate(self.paths):
            for raw, where in iter_records(path, on_bad=self._skip if skip_bad else None):
                try:
                    record = parse_record(raw, where, processor.image_token)
                    self._check_images(record)
                except (RecordError, ImageLoadError) as err:
                    self._skip(err)
                    continue
                self.records.append(record)
                read_from.append(source)
                if limit is not None and len(self.records) >= limit:
                    break
            if limit is not None and len(self.records) >= limit:
                break
        self._measure(read_from)
        if self.skipped:
            total = sum(self.skipped.values())
            logger.warning("skipped %d bad samples: %s", total, dict(sorted(self.skipped.items())))
        if not self.records:
            raise ValueError(f"no usable records in {', '.join(map(str, self.paths))}")

    # --- construction -----------------------------------------------------------------------------
    def _skip(self, err: Exception) -> None:
        """Raise ``err``, or with ``skip_bad`` count it under its reason."""
        if not self.skip_bad:
            raise err
        reason = err.reason if isinstance(err, RecordError) else _reason(err)
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        logger.debug("skipping: %s", err)

    def _check_images(self, record: Record) -> None:
        for k, image in enumerate(record.images):
            path = self.image_path(image)
            if not os.path.isfile(path):
                field = "image" if len(record.images) == 1 else f"images[{k}]"
                what = "a folder, not an image" if os.path.isdir(path) else "image not found"
                raise ImageLoadError(f"{record.source} (id {record.id!r}): field {field}: {what}: {path}")

    def _measure(self, read_from: list[int]) -> None:
        """Tokenize every record once: lengths for the sampler, errors before training starts."""
        kept = []
        records = tqdm(self.records, desc="tokenizing", unit="sample", disable=None, mininterval=1.0)
        for record, source in zip(records, read_from, strict=True):
            try:
                encoded = self._encode_text(record)
            except tuple(_ENCODE_ERRORS) as err:
                self._skip(err)
                continue
            kept.append(record)
            self.lengths.append(len(encoded.input_ids))
            self.has_image.append(bool(record.images))
            self.source_index.append(source)
        self.records = kept

    def _encode_text(self, record: Record) -> EncodedSample:
        where = f"{record.source} (id {record.id!r})"
        ids, labels = self.processor.encode_text(
            record.messages, len(record.images), where=where, max_length=self.max_length
        )
        return EncodedSample(ids, labels, None, self.processor.encode_instruction(record.messages))

    # --- items ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> TrainSample | None:
        record = self.records[i]
        encoded = self._encode_text(record)
        paths = [self.image_path(p) for p in record.images]
        try:
            keys = [f"{self._file_hash(p)}-{self._signature}" for p in paths]
            if self.load_pixels and paths:
                encoded.pixel_values = self.processor.preprocess_images([load_image(p) for p in paths])
        except ImageLoadError as err:
            error = ImageLoadError(f"{record.source} (id {record.id!r}): {err}")
            if not self.skip_bad:
                raise error from None
            # counted in this process only: DataLoader workers keep their own counts
            self.skipped["corrupt_image"] = self.skipped.get("corrupt_image", 0) + 1
            logger.warning("skipping a sample: %s", error)
            return None
        return TrainSample(record.id, encoded, keys)

    def image_path(self, image: str) -> str:
        return os.path.join(self.image_root, image)

    def image_key(self, i: int, k: int) -> str:
        """The content key of image ``k`` of sample ``i`` (what ``TrainSample.image_keys`` holds)."""
        path = self.image_path(self.records[i].images[k])
        return f"{self._file_hash(path)}-{preprocessing_signature(self.processor)}"

    def _file_hash(self, path: str) -> str:
        """sha256 of the file's bytes, memoised while its inode, size and mtime stay the same."""
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise ImageLoadError(f"image not found: {path}") from None
        identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        memo = self._file_hashes.get(path)
        if memo is not None and memo[0] == identity:
            return memo[1]
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        self._file_hashes[path] = (identity, digest.hexdigest())
        return digest.hexdigest()


def _reason(err: Exception) -> str:
    for cls, reason in _ENCODE_ERRORS.items():
        if isinstance(err, cls):
            return reason
    if isinstance(err, ImageLoadError):
        return "missing_image"
    return type(err).__name__
