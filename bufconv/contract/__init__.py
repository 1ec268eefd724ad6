"""The sim-to-real contract: a cache or dataset against a LeRobot training config (`bufconv check`).

Takes in a training config (LeRobot's `TrainRLServerPipelineConfig` JSON, or the object; LeRobot
is not needed to read the JSON) and a cache or dataset; hands on a `CheckReport` of findings
(image shapes after crop/resize, image range, action bounds, gripper kind, fps, the order of
the range and crop/resize steps) and the image chain (what each network's first layer sees, per
path). Open `config.py` first (what a config expects), then `check.py` (what the data says, and
the comparison), `chain.py` and `normalizer.py` (the chain); `report.py` holds what is found.
"""
