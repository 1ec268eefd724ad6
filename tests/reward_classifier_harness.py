"""What LeRobot 0.6.1's reward classifier receives, in training and in the actor (tests/test_reward_classifier.py).

Imported by the test, and run as a script to train a classifier with LeRobot's own entry point:

    python tests/reward_classifier_harness.py CAPTURE.pt --config_path=train_config.json [lerobot-train flags]

runs `lerobot.scripts.lerobot_train.main` unchanged and records, to CAPTURE.pt: for every call
of `Classifier.predict` during training, the batch's dataset frame indices and each camera's
image tensor as `predict` receives it (after the pre-processor's normalization); and every
frame's pixels as training's own dataset object decodes them (uint8 HWC, before the loop's /255).

LeRobot 0.6.1's `lerobot-train` needs `accelerate` (`lerobot[accelerate-dep]`, in bufconv's dev
extra): the real one runs here, single-process on the CPU.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: The dataset's cameras (LeRobot keys) and the stand-in robot's camera names that map onto them.
CAMERAS = {"observation.images.front": "front", "observation.images.side": "side"}
SIZE = (64, 64)
"""Height and width of every camera. The classifier's CNN path puts a fixed
`SpatialLearnedEmbeddings(height=4, width=4)` after the backbone, so the backbone must turn the
image into a 4x4 feature map: the 3-stage ResNet below downsamples by 16 (stem conv /2, max-pool
/2, stages 2 and 3 /2 each), so 64x64 -> 4x4 (LeRobot's resnet10 has 4 stages: 128x128 -> 4x4)."""


def write_backbone(path: Path) -> Path:
    """A tiny random-init transformers ResNet, saved where `AutoModel.from_pretrained` finds it."""
    import torch
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    config = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16, 16], depths=[1, 1, 1], layer_type="basic"
    )
    ResNetModel(config).save_pretrained(path)
    return path


def train_config(
    dataset: Path,
    repo_id: str,
    backbone: Path,
    output_dir: Path,
    *,
    steps: int,
    batch_size: int,
    use_imagenet_stats: bool = True,
) -> dict[str, Any]:
    """A `lerobot-train --config_path` file for the reward classifier, as LeRobot's HIL-SERL guide writes one."""
    return {
        "dataset": {
            "repo_id": repo_id,
            "root": str(dataset),
            "video_backend": "pyav",
            "use_imagenet_stats": use_imagenet_stats,
        },
        "reward_model": {
            "type": "reward_classifier",
            "model_name": str(backbone),
            "model_type": "cnn",
            "num_cameras": len(CAMERAS),
            "num_classes": 2,
            "hidden_dim": 16,
            "latent_dim": 16,
            "image_embedding_pooling_dim": 4,
            "dropout_rate": 0.1,
            "learning_rate": 1e-3,
            "device": "cpu",
            "input_features": {key: {"type": "VISUAL", "shape": [3, *SIZE]} for key in CAMERAS},
        },
        "output_dir": str(output_dir),
        "batch_size": batch_size,
        "num_workers": 0,
        "steps": steps,
        "log_freq": 1,
        "save_freq": steps,
        "save_checkpoint": True,
        "seed": 0,
        "wandb": {"enable": False},
        "job_name": "reward-classifier",
    }


@contextlib.contextmanager
def capture_classifier_inputs() -> Iterator[list[dict[str, Any]]]:
    """Record what every `Classifier.predict` call receives: {"index": frame indices or None, "images": {key: tensor}}.

    `forward` (training) hands `predict` the batch's images; the batch's `index` is taken there.
    The actor's `RewardClassifierProcessorStep` calls `predict` through `predict_reward`.
    """
    from lerobot.rewards.classifier.modeling_classifier import Classifier
    from lerobot.utils.constants import OBS_IMAGE

    records: list[dict[str, Any]] = []
    batch_index: list[Any] = [None]
    forward, predict = Classifier.forward, Classifier.predict

    def recording_forward(self, batch):
        index = batch.get("index")
        batch_index[0] = None if index is None else index.detach().cpu().reshape(-1).clone()
        try:
            return forward(self, batch)
        finally:
            batch_index[0] = None

    def recording_predict(self, xs):
        keys = [key for key in self.config.input_features if key.startswith(OBS_IMAGE)]
        records.append(
            {
                "index": batch_index[0],
                "images": {key: x.detach().cpu().float().clone() for key, x in zip(keys, xs, strict=True)},
            }
        )
        return predict(self, xs)

    Classifier.forward, Classifier.predict = recording_forward, recording_predict
    try:
        yield records
    finally:
        Classifier.forward, Classifier.predict = forward, predict


def main(argv: list[str]) -> None:
    capture, args = Path(argv[0]), argv[1:]
    from lerobot.scripts import lerobot_train

    datasets: list[Any] = []
    make_datasets = lerobot_train.make_train_eval_datasets

    def recording_make_datasets(cfg):
        made = make_datasets(cfg)
        datasets.append(made[0])
        return made

    lerobot_train.make_train_eval_datasets = recording_make_datasets
    sys.argv = ["lerobot-train", *args]
    with capture_classifier_inputs() as records:
        lerobot_train.main()
    import torch

    # Every frame's pixels as training's own dataset decodes them (uint8, before the /255).
    (dataset,) = datasets
    pixels = {}
    for i in range(len(dataset)):
        item = dataset[i]
        pixels[int(item["index"])] = {
            key: item[key].permute(1, 2, 0).contiguous().numpy()
            for key in dataset.meta.camera_keys
            if item[key].dtype == torch.uint8
        }
    torch.save({"records": records, "pixels": pixels}, capture)
    print(json.dumps({"captured": len(records), "frames": len(pixels)}))


if __name__ == "__main__":
    main(sys.argv[1:])
