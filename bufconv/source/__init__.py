"""Source: LeRobot datasets on disk, read and decoded.

Takes in a dataset folder or repo id (layouts v3.0 and v2.1); hands on a `SourceDataset`
(metadata, episode table, parquet columns) and decoded uint8 frames, each file read once, in order.
Open `layouts.py` first (`open_dataset`), then `dataset.py`; `writer.py` writes datasets for the demo and tests.
"""
