"""The thin trainer: TRL SFT / DPO and judge training over the store's splits."""

from training.common import TrainSpec, parquet_dataset
from training.dpo import train_dpo
from training.sft import train_sft

__all__ = ["TrainSpec", "parquet_dataset", "train_dpo", "train_sft"]
