"""The thin trainer: TRL SFT / DPO and judge training over the store's splits."""

from training.sft import TrainSpec, parquet_dataset, train_sft

__all__ = ["TrainSpec", "parquet_dataset", "train_sft"]
