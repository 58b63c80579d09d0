"""LLaVA-format data: records, the dataset, the training collator and the grouped sampler."""

from graft.data.collator import TrainCollator
from graft.data.dataset import LlavaDataset, TrainSample, preprocessing_signature
from graft.data.records import Record, RecordError, iter_records, parse_record, read_records
from graft.data.sampler import GroupedBatchSampler

__all__ = [
    "GroupedBatchSampler",
    "LlavaDataset",
    "Record",
    "RecordError",
    "TrainCollator",
    "TrainSample",
    "iter_records",
    "parse_record",
    "preprocessing_signature",
    "read_records",
]
