"""Config layouts of the LeRobot releases bufconv supports, read by the contract (0.6.1's suite).

A 0.3.x config keeps crop/resize on its gym wrapper's config (`env.wrapper`), 0.4+ on the env
processor's (`env.processor.image_preprocessing`): both are read, and the messages name the one
the config has. `bufconv check` compares ranges only for the cameras the policy takes.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from bufconv.contract.check import CheckReport, DataFacts, _check_range, _check_shapes, _check_steps
from bufconv.contract.config import read_config
from bufconv.lerobot.preflight import preprocessing

FRONT, WRIST = "observation.images.front", "observation.images.wrist"
CROP = {FRONT: (0, 0, 40, 40)}


def feature(kind: str, shape: tuple[int, ...]) -> SimpleNamespace:
    return SimpleNamespace(type=kind, shape=shape)


def config(env: SimpleNamespace, image_range: int = 1) -> SimpleNamespace:
    policy = SimpleNamespace(
        type="sac",
        input_features={FRONT: feature("VISUAL", (3, 32, 32))},
        output_features={"action": feature("ACTION", (3,))},
        normalization_mapping={"VISUAL": "IDENTITY"},
        image_range=image_range,
    )
    return SimpleNamespace(policy=policy, env=env)


def v03_env() -> SimpleNamespace:
    """0.3.x's `HILSerlRobotEnvConfig`: no `processor`; `wrapper` is its `EnvTransformConfig`."""
    return SimpleNamespace(fps=10, wrapper=SimpleNamespace(crop_params_dict=CROP, resize_size=(32, 32)))


def facts(**kwargs) -> DataFacts:
    base = dict(
        kind="cache", path="c.pt", fps=10.0, shapes={FRONT: (3, 48, 64), "action": (3,)}, image_keys=(FRONT,),
        ranges={FRONT: 1}, crop={}, resize=None, actions=torch.zeros(2, 3).numpy(),
    )  # fmt: skip
    base.update(kwargs)
    return DataFacts(**base)


def test_a_03_config_crop_and_resize_come_from_env_wrapper() -> None:
    cfg = config(v03_env())
    expected = read_config(cfg)
    assert (expected.crop, expected.resize) == (CROP, (32, 32))
    assert expected.preprocessing_field == "env.wrapper"
    assert preprocessing(cfg) == (CROP, (32, 32))


def test_a_04_config_keeps_reading_env_processor() -> None:
    env = SimpleNamespace(
        processor=SimpleNamespace(
            image_preprocessing=SimpleNamespace(crop_params_dict=None, resize_size=[24, 24])
        ),
        wrapper=SimpleNamespace(crop_params_dict=CROP, resize_size=(32, 32)),  # ignored where 0.4+'s exists
    )
    expected = read_config(config(env))
    assert (expected.crop, expected.resize) == ({}, (24, 24))
    assert expected.preprocessing_field == "env.processor.image_preprocessing"
    assert read_config(config(SimpleNamespace())).preprocessing_field == "env.processor.image_preprocessing"


def test_messages_name_the_03_fields(tmp_path: Path) -> None:
    expected = read_config(config(v03_env(), image_range=255))
    report = CheckReport("c.pt", "cache", "cfg")
    _check_shapes(facts(), expected, report)
    (finding,) = report.findings
    assert "build with --resize 32,32 (env.wrapper.resize_size)" in finding.message
    report = CheckReport("c.pt", "cache", "cfg")
    _check_steps(expected, report)
    (finding,) = report.findings
    assert "ImageCropResizeWrapper" in finding.message and "bufconv.lerobot.actor" in finding.message
    assert "ImageRangeProcessorStep" not in finding.message  # a step 0.3.x does not have


def test_check_skips_the_range_of_a_camera_the_policy_does_not_take() -> None:
    expected = read_config(config(v03_env()))  # the policy takes the front camera only, in [0,1]
    report = CheckReport("c.pt", "cache", "cfg")
    _check_range(facts(image_keys=(FRONT, WRIST), ranges={FRONT: 1, WRIST: 255}), expected, report)
    assert report.findings == []
    _check_range(facts(image_keys=(FRONT, WRIST), ranges={FRONT: 255, WRIST: 255}), expected, report)
    assert [f.details["key"] for f in report.findings] == [FRONT]  # the policy's camera is still checked
