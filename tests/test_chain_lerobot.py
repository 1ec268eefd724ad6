"""The image chain with LeRobot 0.6.1's real classes: its default MEAN_STD normalization trains guarded.

LeRobot's learner samples the online and offline buffers (`OnlineOfflineMixer`), standardizes the
batch with the policy's pre-processor (`make_pre_post_processors`: `NormalizerProcessorStep`, VISUAL
= MEAN_STD on ImageNet stats by default) and hands it to the SAC algorithm, whose policy's image
encoder bufconv guards. Here that whole path runs for real, with bufconv's two buffers: at range 1
the guard lets every batch through (it checks the map's interval, not [0,1]); a batch divided by
255 twice, or left in [0,255], is refused on the MEAN_STD path; at range 255 the learner refuses to
start (`normalizer-range-mismatch`), before any buffer is built.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_lerobot_integration import FRONT, STATE, WRIST, make_config
from test_lerobot_online import transitions

from bufconv.errors import ContractError, RangeMismatchError
from bufconv.lerobot import initialize_offline_replay_buffer, initialize_replay_buffer
from bufconv.lerobot.entry import guard_policy, guarded_make_policy

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
HW = (64, 64)  # both cameras alike: LeRobot's SAC encoder runs them as one concatenated batch
CAMERAS = ((FRONT, HW), (WRIST, HW))


@pytest.fixture
def root(lerobot_dataset) -> Path:
    return lerobot_dataset(cameras=CAMERAS)


def imagenet_config(root: Path, output_dir: Path):
    """LeRobot's own config with its default normalization: VISUAL = MEAN_STD, ImageNet stats per camera."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    cfg = make_config(root, output_dir)
    for key, hw in CAMERAS:
        cfg.policy.input_features[key] = PolicyFeature(type=FeatureType.VISUAL, shape=(3, *hw))
    assert cfg.policy.normalization_mapping["VISUAL"].value == "MEAN_STD"  # LeRobot's default, untouched
    cfg.policy.dataset_stats = {
        FRONT: dict(IMAGENET),
        WRIST: dict(IMAGENET),
        STATE: {"min": [-3.0] * 6, "max": [3.0] * 6},
        "action": {"min": [0.0] * 3, "max": [1.0] * 3},
    }
    cfg.policy.image_encoder_hidden_dim = 4
    cfg.policy.latent_dim = 8
    from lerobot.rl.algorithms.factory import make_algorithm_config

    cfg.algorithm = make_algorithm_config("sac")  # what the config's validate() sets up
    cfg.algorithm.policy_config = cfg.policy
    return cfg


def learner_step_parts(cfg, image_range: int | None = None):
    """What LeRobot 0.6.1's learner builds before its first step, with bufconv's buffers and guard."""
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.gaussian_actor.modeling_gaussian_actor import GaussianActorPolicy
    from lerobot.rl.algorithms.factory import make_algorithm
    from lerobot.rl.data_sources.data_mixer import OnlineOfflineMixer
    from lerobot.rl.trainer import RLTrainer

    policy = guarded_make_policy(lambda cfg, env_cfg=None: GaussianActorPolicy(cfg), image_range)(
        cfg=cfg.policy, env_cfg=None
    )
    algorithm = make_algorithm(cfg=cfg.algorithm, policy=policy)
    preprocessor, _ = make_pre_post_processors(policy_cfg=cfg.policy, dataset_stats=cfg.policy.dataset_stats)
    online = initialize_replay_buffer(cfg, "cpu", "cpu", image_range=image_range)
    for t in transitions(12, seed=1, shapes={key: (3, *hw) for key, hw in CAMERAS}):
        online.add(**t)
    offline = initialize_offline_replay_buffer(cfg, "cpu", "cpu", image_range=image_range)
    mixer = OnlineOfflineMixer(online_buffer=online, offline_buffer=offline, online_ratio=0.5)
    trainer = RLTrainer(algorithm=algorithm, data_mixer=mixer, batch_size=8, preprocessor=preprocessor)
    return policy, trainer, preprocessor, online


def encoder_inputs(policy) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    encoder = policy.encoder_critic.image_encoder if hasattr(policy, "encoder_critic") else None
    if encoder is None:
        encoder = next(m.image_encoder for m in policy.modules() if hasattr(m, "image_encoder"))
    encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    return seen


def test_lerobots_default_normalization_trains_with_the_guard_on(tmp_path: Path, root: Path) -> None:
    cfg = imagenet_config(root, tmp_path / "train")
    policy, trainer, _, _ = learner_step_parts(cfg)
    seen = encoder_inputs(policy)
    for _ in range(2):
        trainer.training_step()  # the real SAC update: no refusal
    assert seen
    lows = min(float(x.min()) for x in seen)
    highs = max(float(x.max()) for x in seen)
    assert lows < 0.0  # standardized: what the range-only guard refused as "already normalised"
    assert lows >= -2.12 - 1e-3 and highs <= 2.64 + 1e-3  # inside the image of [0,255] under the map


def test_the_range_only_guard_refused_lerobots_default_config(tmp_path: Path, root: Path) -> None:
    """Before the chain: one range at one place, a false positive on LeRobot's own default."""
    from lerobot.policies.gaussian_actor.modeling_gaussian_actor import GaussianActorPolicy

    cfg = imagenet_config(root, tmp_path / "train")
    policy = GaussianActorPolicy(cfg.policy)
    guard_policy(policy, 1)  # no maps: the range alone
    normalized = (torch.rand(2, 3, *HW) - 0.485) / 0.229
    with pytest.raises(RangeMismatchError, match="negative values"):
        policy.encoder_critic.image_encoder(normalized)


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [(lambda x: x / 255.0, "double-normalized"), (lambda x: x * 255.0, "range-mismatch")],
    ids=["divided-twice", "never-divided"],
)
def test_a_spoiled_batch_is_refused_on_the_mean_std_path(
    tmp_path: Path, root: Path, spoil, problem: str
) -> None:
    """The batch the learner samples, spoiled before LeRobot's pre-processor standardizes it."""
    from lerobot.rl.trainer import preprocess_rl_batch

    cfg = imagenet_config(root, tmp_path / "train")
    policy, _, preprocessor, online = learner_step_parts(cfg)
    batch = online.sample(4)
    batch["state"] = {k: spoil(v) if k != STATE else v for k, v in batch["state"].items()}
    batch = preprocess_rl_batch(preprocessor, batch)
    observations = {k: batch["state"][k] for k in (FRONT, WRIST, STATE)}
    with pytest.raises(RangeMismatchError) as caught:
        policy.encoder_critic.get_cached_image_features(observations)
    assert caught.value.problem == problem
    assert caught.value.path_map is not None and "(p/255 - [0.485, 0.456, 0.406])" in caught.value.path_map
    assert caught.value.key == FRONT  # the cameras are told apart in the concatenated batch


def test_range_255_with_lerobots_default_normalization_is_refused_at_start(
    tmp_path: Path, root: Path
) -> None:
    cfg = imagenet_config(root, tmp_path / "train")
    with pytest.raises(ContractError) as caught:
        initialize_replay_buffer(cfg, "cpu", "cpu", image_range=255)
    codes = {f.code for f in caught.value.findings}
    assert codes == {"normalizer-range-mismatch"}
    assert "normalization_mapping.VISUAL=IDENTITY" in caught.value.message
    assert not (Path(cfg.output_dir) / "online_buffer").exists()  # refused before anything was written
    with pytest.raises(ContractError, match="normalizer-range-mismatch"):
        initialize_offline_replay_buffer(cfg, "cpu", "cpu", image_range=255)
