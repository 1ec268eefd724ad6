"""Buffer: what a learner samples from, over an opened cache.

Takes in a `CacheFile` (or builds one through `loader.load_or_build`); hands on batches in
LeRobot's `BatchTransition` layout, images converted to the declared range on the device.
Open `offline.py` first (`OfflineBuffer`), then `loader.py`; `drq`, `prefetch`, `recycle` serve sampling.
"""
