"""Record a small demonstration dataset from gym-hil's PandaPickCube-v0, with LeRobot's own writer.

    MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa .venv/bin/python scripts/hil_serl/record_demos.py outputs/hil_serl/demos

The env is made exactly as LeRobot's actor makes it (`gym_manipulator.make_robot_env` with
`name=gym_hil`), the actions are scripted (a drift towards the table with noise, the gripper
opening and closing), and the frames go through `LeRobotDataset.create / add_frame /
save_episode / finalize`: a v3.0 dataset with both cameras as AV1 video, the keys the training
config names (`observation.images.front`, `observation.images.wrist`, `observation.state`,
`action`, `next.reward`, `next.done`, `complementary_info.discrete_penalty`).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

TASK = "PandaPickCube-v0"
CAMERAS = ("front", "wrist")
IMAGE_SHAPE = (128, 128, 3)
STATE_DIM = 18
ACTION_DIM = 4


def features() -> dict[str, dict[str, Any]]:
    """The dataset's features, as LeRobot's `LeRobotDataset.create` takes them."""
    out: dict[str, dict[str, Any]] = {
        f"observation.images.{camera}": {
            "dtype": "video",
            "shape": IMAGE_SHAPE,
            "names": ["height", "width", "channels"],
        }
        for camera in CAMERAS
    }
    out["observation.state"] = {"dtype": "float32", "shape": (STATE_DIM,), "names": None}
    out["action"] = {"dtype": "float32", "shape": (ACTION_DIM,), "names": None}
    out["next.reward"] = {"dtype": "float32", "shape": (1,), "names": None}
    out["next.done"] = {"dtype": "bool", "shape": (1,), "names": None}
    out["complementary_info.discrete_penalty"] = {"dtype": "float32", "shape": (1,), "names": None}
    return out


def make_env() -> Any:
    """PandaPickCube-v0 with the arguments LeRobot 0.6.1's `make_robot_env` passes for gym_hil."""
    os.environ.setdefault("MUJOCO_GL", "osmesa")  # headless; EGL needs a GPU
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    import gym_hil  # noqa: F401  (registers the envs)
    import gymnasium as gym

    return gym.make(
        f"gym_hil/{TASK}", image_obs=True, render_mode="human", use_gripper=True, gripper_penalty=0.0
    )


def scripted_action(rng: np.random.Generator, step: int) -> np.ndarray:
    """xyz deltas in [-1, 1] drifting down with noise; gripper in [0, 2] (0 closes, 2 opens), open first.

    The gripper value is continuous, as the policy's (the config's MIN_MAX range [0, 2]).
    """
    xyz = np.clip(np.array([0.2, 0.0, -0.6]) + rng.normal(0.0, 0.3, 3), -1.0, 1.0)
    gripper = rng.uniform(1.5, 2.0) if step < 4 else rng.uniform(0.0, 0.5)
    return np.array([*xyz, gripper], np.float32)


def record(root: str | os.PathLike[str], *, episodes: int = 3, length: int = 8, seed: int = 0) -> Path:
    """Write `episodes` scripted episodes of at most `length` frames to `root` (which must not exist).

    Returns:
        The dataset folder.
    """
    from lerobot.datasets import LeRobotDataset

    logging.getLogger("libav").setLevel(logging.ERROR)
    env = make_env()
    rng = np.random.default_rng(seed)
    dataset = LeRobotDataset.create(
        repo_id="local/gym_hil_pick_cube", fps=10, features=features(), root=root, use_videos=True
    )
    try:
        for episode in range(episodes):
            observation, _ = env.reset(seed=seed + episode)
            for step in range(length):
                action = scripted_action(rng, step)
                next_observation, reward, terminated, truncated, info = env.step(action)
                done = bool(terminated) or step == length - 1
                dataset.add_frame(
                    {
                        **{f"observation.images.{c}": np.asarray(observation["pixels"][c]) for c in CAMERAS},
                        "observation.state": np.asarray(observation["agent_pos"], np.float32),
                        "action": action,
                        "next.reward": np.array([reward], np.float32),
                        "next.done": np.array([done]),
                        "complementary_info.discrete_penalty": np.array(
                            [info.get("discrete_penalty", 0.0)], np.float32
                        ),
                        "task": "pick up the cube",
                    }
                )
                observation = next_observation
                if done or truncated:
                    break
            dataset.save_episode()
    finally:
        dataset.finalize()
        env.close()
    return Path(root)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", help="the dataset folder to write (must not exist)")
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--length", type=int, default=8, help="frames per episode (at most)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = record(args.root, episodes=args.episodes, length=args.length, seed=args.seed)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
