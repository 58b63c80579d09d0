"""LLaVA-format data: records, the dataset, the training collator and the batch samplers."""

from graft.data.collator import TrainCollator
from graft.data.dataset import LlavaDataset, TrainSample, preprocessing_signature
from graft.data.mixing import MixedBatchSampler, batch_counts
from graft.data.records import Record, parse_record
from graft.data.sampler import GroupedBatchSampler

__all__ = [
    "GroupedBatchSampler",
    "LlavaDataset",
    "MixedBatchSampler",
    "Record",
    "TrainCollator",
    "TrainSample",
    "batch_counts",
    "parse_record",
    "preprocessing_signature",
]
