"""Cache: the file format (`offline_buffer.pt`, docs/format.md), and everything that checks it.

Takes in tensors and metadata from the build (streamed rows through `sink`, the rest through
`writer`); hands on an opened, checked `CacheFile` (memory-mapped tensors) to the buffers.
Open `reader.py` first; then `writer.py`, `fingerprint.py`/`freshness.py`, `verification.py`.
"""
