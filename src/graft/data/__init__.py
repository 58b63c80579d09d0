"""LLaVA-format data: records, the dataset, the training collator and the batch samplers."""

from graft.data.collator import TrainCollator
from graft.data.dataset import LlavaDataset, TrainSample, preprocessing_signature
from graft.data.mixing import MixedBatchSampler, batch_counts
from graft.data.records import Record, RecordError, iter_records, parse_record, read_records
from graft.data.sampler import GroupedBatchSampler

__all__ = [
    "GroupedBatchSampler",
    "LlavaDataset",
    "MixedBatchSampler",
    "Record",
    "RecordError",
    "TrainCollator",
    "TrainSample",
    "batch_counts",
    "iter_records",
    "parse_record",
    "preprocessing_signature",
    "read_records",
]
