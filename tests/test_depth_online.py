"""Depth keys on the live side (issue 20, SPEC section 15): the online buffer, the learner's
drop-ins, the encoder guard and the export, with LeRobot 0.6.1's config, reader and writer.

A depth key (`<cam>_depth`, rows (1, H, W)) is added in the buffer's `depth_unit`, refused in the
other unit (nothing added), stored as float32, never range-checked, DrQ-shifted with its RGB
camera, delivered float32 (B, 1, H, W) in the unit, and kept through checkpoints, background
commits, merges and resume (the manifest records the unit).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_depth import DEPTH_HW, write_rgbd
from torch import nn

import bufconv
from bufconv import OnlineBuffer
from bufconv.buffer.store import TransitionStore
from bufconv.cache import segments as seg
from bufconv.errors import CacheError, RangeMismatchError

RGB = "observation.images.front"
DEPTH = "observation.images.front_depth"
STATE = "observation.state"
HW = (12, 14)
WAIT_S = 60.0


def observation(g: torch.Generator, unit: str = "mm", *, whole: bool = False) -> dict[str, torch.Tensor]:
    """An RGB-D observation as an actor sends it (batch of one): RGB in [0,1], depth 0.2-6 m in
    `unit` (whole millimetres with `whole`), a few pixels of no return (0)."""
    metres = torch.rand((1, 1, *HW), generator=g) * 5.8 + 0.2
    metres[..., :2, :3] = 0.0
    depth = metres * 1000 if unit == "mm" else metres
    if whole:
        depth = depth.round()
    return {
        RGB: torch.randint(0, 256, (1, 3, *HW), generator=g).float() / 255,
        DEPTH: depth,
        STATE: torch.randn((1, 4), generator=g),
    }


def episodes(
    count: int, seed: int = 0, unit: str = "mm", *, length: int = 4, whole: bool = False
) -> list[dict]:
    """`count` transitions in episodes of `length`; state is the previous next_state (the same objects)."""
    g = torch.Generator().manual_seed(seed)
    out, current = [], observation(g, unit, whole=whole)
    for i in range(count):
        following = observation(g, unit, whole=whole)
        end = i % length == length - 1
        out.append(
            {
                "state": current,
                "action": torch.rand((1, 2), generator=g),
                "reward": float(i),
                "next_state": following,
                "done": end,
                "truncated": False,
            }
        )
        current = observation(g, unit, whole=whole) if end else following
    return out


def fill(buffer: OnlineBuffer, transitions: list[dict]) -> None:
    for t in transitions:
        buffer.add(**t)


def assert_holds(buffer: OnlineBuffer, transitions: list[dict]) -> None:
    """Every transition reads back as added: depth exactly (float32), the RGB as uint8 makes it."""
    got = buffer[list(range(len(buffer)))]
    for part in ("state", "next_state"):
        depth = got[part][DEPTH]
        assert depth.dtype == torch.float32 and depth.shape == (len(transitions), 1, *HW)
        assert torch.equal(depth, torch.cat([t[part][DEPTH] for t in transitions]))
        rgb = torch.cat([t[part][RGB] for t in transitions])
        assert torch.equal(got[part][RGB], (rgb * 255).round() / 255)
        assert torch.equal(got[part][STATE], torch.cat([t[part][STATE] for t in transitions]))
    assert torch.equal(got["action"], torch.cat([t["action"] for t in transitions]))


@pytest.fixture(params=["cpu", "generic"])
def store_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways `add` converts rows: straight into CPU rings, and the path of other devices
    (taken here on CPU memory: the store told it is not on the CPU)."""
    if request.param == "generic":
        original = TransitionStore.__init__

        def init(self, *args, **kwargs) -> None:
            original(self, *args, **kwargs)
            self._cpu = False

        monkeypatch.setattr(TransitionStore, "__init__", init)
    return str(request.param)


# ---- the online buffer ------------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["mm", "m"])
def test_depth_is_added_stored_and_sampled_in_its_unit(unit: str, store_path: str) -> None:
    buffer = OnlineBuffer(capacity=50, depth_unit=unit, use_drq=False)
    transitions = episodes(12, unit=unit)
    fill(buffer, transitions)
    assert buffer.depth_keys == [DEPTH] and buffer.depth_units == {DEPTH: unit}
    assert buffer.image_keys == [RGB]  # depth is not an image: no range, no uint8
    assert buffer._store is not None
    assert buffer._store.schema.frames[DEPTH].dtype == "float32"
    assert buffer._store.schema.frames[DEPTH].shape == (1, *HW)
    batch = buffer.sample(5)
    for part in ("state", "next_state"):
        assert batch[part][DEPTH].dtype == torch.float32 and batch[part][DEPTH].shape == (5, 1, *HW)
        bufconv.check_unit(batch[part][DEPTH], unit, name=DEPTH)
    assert_holds(buffer, transitions)
    # a state that is the previous next_state is stored once, depth frame included
    assert buffer._store.end_frame == 12 + 3


def test_a_state_equal_by_value_reuses_the_frame(store_path: str) -> None:
    """The actor sends copies: the state equal to the previous next_state (its depth too) is one frame."""
    buffer = OnlineBuffer(capacity=50, use_drq=False)
    transitions = episodes(8)
    for t in transitions:
        buffer.add(**{**t, "state": {k: v.clone() for k, v in t["state"].items()}})
    assert buffer._store is not None and buffer._store.end_frame == 8 + 2
    assert_holds(buffer, transitions)


@pytest.mark.parametrize(("unit", "wrong"), [("mm", "m"), ("m", "mm")])
def test_the_other_unit_is_refused_and_nothing_is_added(unit: str, wrong: str, store_path: str) -> None:
    bad = episodes(2, seed=5, unit=wrong)
    fresh = OnlineBuffer(capacity=10, depth_unit=unit)
    with pytest.raises(bufconv.UnitMismatchError) as first:
        fresh.add(**bad[0])  # the first transition too: no schema is kept
    assert len(fresh) == 0 and fresh.depth_keys == [] and fresh._store is None
    buffer = OnlineBuffer(capacity=10, depth_unit=unit)
    good = episodes(3, unit=unit)
    fill(buffer, good)
    frames = buffer._store.end_frame if buffer._store else None
    for t in (bad[0], {**good[-1], "state": good[-1]["next_state"], "next_state": bad[1]["next_state"]}):
        with pytest.raises(bufconv.UnitMismatchError) as refused:
            buffer.add(**t)
        assert len(buffer) == 3 and buffer._store is not None and buffer._store.end_frame == frames
        error = refused.value
        assert isinstance(error, RangeMismatchError) and error.problem == "unit-mismatch"
        assert DEPTH in str(error) and f"declared unit {unit}" in str(error) and error.unit == unit
    assert first.value.found_max == pytest.approx(float(bad[0]["state"][DEPTH].max()))
    assert_holds(buffer, good)
    negative = {**good[0], "state": {**good[0]["state"], DEPTH: -good[0]["state"][DEPTH]}}
    with pytest.raises(bufconv.UnitMismatchError, match="negative"):
        buffer.add(**negative)
    # no return anywhere (all zero) is ambiguous, and accepted
    blank = {**good[0], "state": {**good[0]["state"], DEPTH: torch.zeros((1, 1, *HW))}}
    buffer.add(**blank)
    assert len(buffer) == 4


def test_mm_depth_is_never_range_checked() -> None:
    """Millimetres in [0,255]-range terms are far out of range: a depth key is checked by its unit only."""
    for image_range in (1, 255):
        buffer = OnlineBuffer(capacity=10, image_range=image_range)
        fill(buffer, [{**t, "state": {**t["state"], RGB: t["state"][RGB] * image_range},
                       "next_state": {**t["next_state"], RGB: t["next_state"][RGB] * image_range}}
                      for t in episodes(3)])  # fmt: skip
        assert len(buffer) == 3 and float(buffer.sample(3)["state"][DEPTH].max()) > 255


def test_explicit_depth_keys() -> None:
    """`depth_keys=` names depth keys that do not follow LeRobot's naming, and nothing else is depth."""
    g = torch.Generator().manual_seed(1)
    obs = {"observation.images.front": observation(g)[RGB], "observation.range": observation(g)[DEPTH]}
    buffer = OnlineBuffer(capacity=5, depth_keys=["observation.range"])
    buffer.add(obs, torch.zeros(1, 2), 0.0, obs, True, False)
    assert buffer.depth_keys == ["observation.range"]
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        OnlineBuffer(capacity=5, depth_keys=["observation.images.front"]).add(
            obs, torch.zeros(1, 2), 0.0, obs, True, False
        )


def test_drq_shifts_depth_with_its_cameras_offsets() -> None:
    """Depth built from its camera's pixels (R * 100 + G + 1 mm): equal after the shift only if
    both got the same offsets."""
    g = torch.Generator().manual_seed(3)

    def obs() -> dict[str, torch.Tensor]:
        rgb = torch.randint(0, 256, (1, 3, *HW), generator=g).float()
        return {RGB: rgb, DEPTH: rgb[:, :1] * 100 + rgb[:, 1:2] + 1, STATE: torch.zeros(1, 4)}

    buffer = OnlineBuffer(
        capacity=20, image_range=255, use_drq=True, generator=torch.Generator().manual_seed(0)
    )
    current = obs()
    for i in range(10):
        following = obs()
        buffer.add(current, torch.zeros(1, 2), 0.0, following, i % 5 == 4, False)
        current = following if i % 5 != 4 else obs()
    batch = buffer.sample(64)
    unshifted = buffer[list(range(10))]
    moved = False
    for part in ("state", "next_state"):
        image, depth = batch[part][RGB], batch[part][DEPTH]
        assert torch.equal(depth[:, 0], image[:, 0] * 100 + image[:, 1] + 1)
        moved = moved or not any(torch.equal(depth[0], d) for d in unshifted[part][DEPTH])
    assert moved  # the shift did move some depth frame


# ---- the folder -------------------------------------------------------------------------------


def test_checkpoint_and_resume_keep_depth(tmp_path: Path) -> None:
    folder = tmp_path / "online"
    buffer = OnlineBuffer(capacity=30, path=folder, depth_unit="m", commit_interval_s=None, use_drq=False)
    transitions = episodes(10, unit="m")
    fill(buffer, transitions[:6])
    buffer.checkpoint()
    fill(buffer, transitions[6:])
    buffer.checkpoint()
    buffer.close()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["keys"]["depth"] == [DEPTH] and manifest["keys"]["images"] == [RGB]
    assert manifest["depth"][DEPTH]["unit"] == "m"
    assert manifest["schema"]["frames"][DEPTH] == {"dtype": "float32", "shape": [1, *HW]}
    resumed = OnlineBuffer(capacity=30, path=folder, depth_unit="m", use_drq=False)
    assert (resumed.status, resumed.lost, resumed.depth_keys) == ("resumed", 0, [DEPTH])
    assert_holds(resumed, transitions)
    resumed.add(**episodes(1, seed=9, unit="m")[0])  # still in metres after resume
    with pytest.raises(bufconv.UnitMismatchError):
        resumed.add(**episodes(1, seed=9, unit="mm")[0])
    resumed.close()
    with pytest.raises(CacheError) as refused:
        OnlineBuffer(capacity=30, path=folder)  # depth_unit="mm", LeRobot's default
    message = str(refused.value)
    assert "\n" not in message and f"[{DEPTH!r}] in m, not mm" in message and "depth_unit='m'" in message


def test_a_folder_without_depth_fields_stays_readable(tmp_path: Path) -> None:
    """A folder written before depth keys existed (no `depth`, no `keys.depth`) resumes as it was."""
    folder = tmp_path / "old"
    buffer = OnlineBuffer(capacity=10, path=folder, commit_interval_s=None, use_drq=False)
    g = torch.Generator().manual_seed(0)
    obs = {RGB: observation(g)[RGB], STATE: torch.zeros(1, 4)}
    buffer.add(obs, torch.zeros(1, 2), 0.0, obs, True, False)
    buffer.checkpoint()
    buffer.close()
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["depth"], manifest["keys"]["depth"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    resumed = OnlineBuffer(capacity=10, path=folder, depth_unit="m")
    assert (len(resumed), resumed.depth_keys, resumed.image_keys) == (1, [], [RGB])
    resumed.close()


def test_background_commits_and_merges_carry_depth(tmp_path: Path) -> None:
    folder = tmp_path / "online"
    transitions = episodes(40)
    buffer = OnlineBuffer(capacity=200, path=folder, commit_interval_s=0.05, use_drq=False)
    deadline = time.monotonic() + WAIT_S
    for t in transitions[:20]:
        buffer.add(**t)
    manifest = folder / "manifest.json"
    while not manifest.is_file() or json.loads(manifest.read_text())["transitions"]["end"] < 20:
        assert time.monotonic() < deadline, "background commits did not reach 20 transitions"
        time.sleep(0.02)
    reader = OnlineBuffer(capacity=200, path=folder, read_only=True, use_drq=False)  # no checkpoint() called
    assert reader.depth_keys == [DEPTH]
    assert_holds(reader, transitions[:20])
    reader.close()
    buffer.close()
    merged = OnlineBuffer(capacity=200, path=folder, commit_interval_s=None, use_drq=False)
    for t in transitions[20:]:  # one commit per transition, merged
        merged.add(**t)
        merged.checkpoint()
        assert merged.commits is not None
        merged.commits.merge()
    files = sorted(folder.glob("seg-*.pt"))
    assert len(files) < 20 + 1 - seg.MERGE_FANOUT + 2  # some were merged
    merged.close()
    resumed = OnlineBuffer(capacity=200, path=folder, use_drq=False)
    assert (len(resumed), resumed.lost, resumed.warnings) == (40, 0, [])
    assert_holds(resumed, transitions)
    resumed.close()


# ---- the learner's drop-ins ---------------------------------------------------------------------


def rgbd_config(root: Path, output_dir: Path, unit: str | None, *, normalize: bool = True):
    """LeRobot 0.6.1's RL training config for the RGB-D dataset of tests/test_depth.py."""
    from lerobot.configs.default import DatasetConfig
    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.policies.gaussian_actor.configuration_gaussian_actor import GaussianActorConfig
    from lerobot.rl.train_rl import TrainRLServerPipelineConfig

    features = {
        RGB: PolicyFeature(type=FeatureType.VISUAL, shape=(3, 24, 32)),
        DEPTH: PolicyFeature(type=FeatureType.VISUAL, shape=(1, *DEPTH_HW)),
        STATE: PolicyFeature(type=FeatureType.STATE, shape=(3,)),
    }
    extra = {} if normalize else {"normalization_mapping": {"VISUAL": NormalizationMode.IDENTITY}}
    policy = GaussianActorConfig(
        input_features=features,
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(2,))},
        offline_buffer_capacity=20,
        online_buffer_capacity=20,
        **extra,
    )
    dataset = DatasetConfig(
        repo_id="bufconv/rgbd", root=str(root), **({"depth_output_unit": unit} if unit else {})
    )
    return TrainRLServerPipelineConfig(dataset=dataset, policy=policy, output_dir=output_dir)


def rgbd_transition(g: torch.Generator, unit: str) -> dict:
    def obs() -> dict[str, torch.Tensor]:
        metres = torch.rand((1, 1, *DEPTH_HW), generator=g) * 5 + 0.3
        return {
            RGB: torch.rand((1, 3, 24, 32), generator=g),
            DEPTH: metres * 1000 if unit == "mm" else metres,
            STATE: torch.randn((1, 3), generator=g),
        }

    return {"state": obs(), "action": torch.rand((1, 2), generator=g), "reward": 1.0,
            "next_state": obs(), "done": True, "truncated": False,
            "complementary_info": {"is_intervention": 1.0}}  # fmt: skip


def test_learner_drop_ins_read_the_depth_unit_from_the_config(tmp_path: Path) -> None:
    from bufconv.lerobot import initialize_offline_replay_buffer, initialize_replay_buffer

    root = write_rgbd(tmp_path / "dataset", "uint16")  # a RealSense's uint16 millimetres
    cfg = rgbd_config(root, tmp_path / "outputs", "m")
    g = torch.Generator().manual_seed(0)
    online = initialize_replay_buffer(cfg, device="cpu", storage_device="cpu", commit_interval_s=None)
    assert online.depth_unit == "m"
    online.add(**rgbd_transition(g, "m"))
    with pytest.raises(bufconv.UnitMismatchError):
        online.add(**rgbd_transition(g, "mm"))
    assert online.depth_keys == [DEPTH] and len(online) == 1
    bufconv.check_unit(online.sample(1)["state"][DEPTH], "m")
    online.checkpoint()
    online.close()

    offline = initialize_offline_replay_buffer(
        cfg, device="cpu", storage_device="cpu", commit_interval_s=None
    )
    assert offline.depth_units == {DEPTH: "m"}
    added = rgbd_transition(g, "m")
    offline.add(**added)
    last = offline[[len(offline) - 1]]
    assert torch.equal(last["state"][DEPTH], added["state"][DEPTH])
    bufconv.check_unit(offline[list(range(len(offline)))]["state"][DEPTH], "m")
    offline.checkpoint()
    offline.close()
    del offline

    cfg.resume = True
    resumed = initialize_offline_replay_buffer(
        cfg, device="cpu", storage_device="cpu", commit_interval_s=None
    )
    assert resumed.status == "hit" and len(resumed) == resumed.dataset_transitions + 1
    assert torch.equal(resumed[[len(resumed) - 1]]["next_state"][DEPTH], added["next_state"][DEPTH])
    resumed.close()
    online = initialize_replay_buffer(cfg, device="cpu", storage_device="cpu", commit_interval_s=None)
    assert (online.status, len(online), online.depth_keys) == ("resumed", 1, [DEPTH])
    online.close()

    default = rgbd_config(root, tmp_path / "defaults", None)  # LeRobot's default depth_output_unit: mm
    mm = initialize_replay_buffer(default, device="cpu", storage_device="cpu", commit_interval_s=None)
    mm.add(**rgbd_transition(g, "mm"))
    assert mm.depth_unit == "mm"
    mm.close()


class _Encoder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))


class _Owner(nn.Module):
    """LeRobot's observation encoder: its cameras concatenated along dim 0 into one image_encoder."""

    def __init__(self, keys: list[str]) -> None:
        super().__init__()
        self.image_keys = keys
        self.image_encoder = _Encoder()

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.image_encoder(torch.cat([obs[k] for k in self.image_keys], dim=0))


def test_the_guard_checks_depth_by_its_unit() -> None:
    from bufconv.lerobot.entry import guard_policy

    gray = "observation.images.gray"
    policy = _Owner([gray, DEPTH])
    guard_policy(policy, 1, None, {DEPTH: "mm"})
    pixels, mm = torch.rand((2, 1, 8, 8)), torch.full((2, 1, 8, 8), 750.0)
    policy({gray: pixels, DEPTH: mm})  # millimetres are not a range problem
    with pytest.raises(bufconv.UnitMismatchError, match=DEPTH):
        policy({gray: pixels, DEPTH: mm / 1000})
    with pytest.raises(RangeMismatchError, match=gray):
        policy({gray: pixels * 255, DEPTH: mm})  # the camera beside it is still range-checked


@pytest.mark.parametrize("normalize", [False, True])
def test_guarded_make_policy_takes_the_depth_unit(tmp_path: Path, normalize: bool) -> None:
    """Depth reaching the encoder as delivered (IDENTITY) is checked against the unit; under
    LeRobot's default MEAN_STD it is no longer in a unit and passes the guard."""
    from bufconv.lerobot.entry import guarded_make_policy

    cfg = rgbd_config(tmp_path, tmp_path / "out", "m", normalize=normalize).policy
    cfg.input_features = {DEPTH: cfg.input_features[DEPTH], STATE: cfg.input_features[STATE]}
    if normalize:  # LeRobot normalizes a key only where it has its stats
        cfg.dataset_stats = {DEPTH: {"mean": [2000.0], "std": [1000.0]}}
    make = guarded_make_policy(lambda cfg: _Owner([DEPTH]), None, "m")
    policy = make(cfg=cfg)
    metres = torch.full((2, 1, *DEPTH_HW), 1.5)
    policy({DEPTH: metres})
    if normalize:
        policy({DEPTH: metres * 1000})
    else:
        with pytest.raises(bufconv.UnitMismatchError, match="declared unit m"):
            policy({DEPTH: metres * 1000})
    unknown = guarded_make_policy(lambda cfg: _Owner([DEPTH]), None)(cfg=cfg)  # no unit: never a range check
    unknown({DEPTH: metres * 1000})


# ---- export -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "whole", "written"), [("mm", True, "mm"), ("mm", False, "m"), ("m", False, "m")]
)
def test_export_writes_depth_features_lerobot_reads_back(
    tmp_path: Path, unit: str, whole: bool, written: str
) -> None:
    from lerobot.datasets import LeRobotDataset

    folder = tmp_path / "online"
    buffer = OnlineBuffer(capacity=20, path=folder, depth_unit=unit, commit_interval_s=None, use_drq=False)
    transitions = episodes(6, unit=unit, length=3, whole=whole)
    fill(buffer, transitions)
    buffer.checkpoint()
    buffer.close()
    from bufconv.buffer.export import export_lerobot

    _dataset, count = export_lerobot(folder, tmp_path / "exported")
    assert count == 6
    info = json.loads((tmp_path / "exported" / "meta" / "info.json").read_text())["features"][DEPTH]
    assert info["dtype"] == "image" and tuple(info["shape"]) == (*HW, 1)
    assert info["info"]["is_depth_map"] is True and info["info"]["depth_unit"] == written
    expected = torch.cat([t["state"][DEPTH] for t in transitions])
    for read_unit in ("mm", "m"):
        back = LeRobotDataset("bufconv/exported", root=tmp_path / "exported", depth_output_unit=read_unit)
        got = torch.stack([back[i][DEPTH] for i in range(len(back))])
        want = bufconv.to_unit(expected, unit, read_unit)
        assert got.dtype == torch.float32 and got.shape == want.shape
        if read_unit == unit and written == unit:
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    assert [int(back[i]["episode_index"]) for i in range(len(back))] == [0, 0, 0, 1, 1, 1]
    rebuilt = bufconv.load_or_build(tmp_path / "exported", tmp_path / "c.pt", depth_unit=unit, use_drq=False)
    assert rebuilt.depth_units == {DEPTH: unit}
    torch.testing.assert_close(rebuilt[list(range(6))]["state"][DEPTH], expected, rtol=1e-6, atol=0)


def test_export_of_the_offline_buffer_keeps_depth(tmp_path: Path) -> None:
    root = write_rgbd(tmp_path / "dataset", "uint16")
    buffer = bufconv.load_or_build(root, tmp_path / "c.pt", depth_unit="mm", use_drq=False)
    exported = buffer.to_lerobot_dataset("bufconv/again", root=tmp_path / "again")
    assert exported.meta.features[DEPTH]["info"]["depth_unit"] == "mm"  # whole mm: uint16 again
    from lerobot.datasets import LeRobotDataset

    back = LeRobotDataset("bufconv/again", root=tmp_path / "again")
    got = torch.stack([back[i][DEPTH] for i in range(len(back))])
    assert torch.equal(got, buffer[list(range(len(buffer)))]["state"][DEPTH])
    assert np.asarray(got).max() > 1000  # millimetres


def test_the_offline_buffers_added_depth_is_unit_checked_and_kept_in_its_unit(tmp_path: Path) -> None:
    """An intervention added to an RGB-D cache in mm: metres refused (nothing added), mm kept through
    its folder; the same folder under a cache rebuilt in metres is refused in one line."""
    root = write_rgbd(tmp_path / "dataset", "uint16")
    added = tmp_path / "added"
    buffer = bufconv.load_or_build(root, tmp_path / "c.pt", depth_unit="mm", use_drq=False, added_path=added)
    rows = buffer[[0]]
    state = {k: v[0] for k, v in rows["state"].items()}
    in_metres = dict(state, **{DEPTH: state[DEPTH] / 1000})
    with pytest.raises(bufconv.UnitMismatchError, match=DEPTH):
        buffer.add(in_metres, rows["action"][0], 1.0, state, False, False)
    assert len(buffer) == buffer.dataset_transitions  # nothing added
    buffer.add(state, rows["action"][0], 1.0, state, False, False)
    buffer.checkpoint()
    buffer.close()
    manifest = json.loads((added / "manifest.json").read_text())
    assert manifest["depth"][DEPTH]["unit"] == "mm" and manifest["keys"]["depth"] == [DEPTH]
    again = bufconv.load_or_build(root, tmp_path / "c.pt", depth_unit="mm", use_drq=False, added_path=added)
    assert len(again) == again.dataset_transitions + 1
    assert torch.equal(again[[len(again) - 1]]["state"][DEPTH], rows["state"][DEPTH])
    again.close()
    with pytest.raises(bufconv.BufconvError, match="another --depth-unit"):
        bufconv.load_or_build(root, tmp_path / "m.pt", depth_unit="m", use_drq=False, added_path=added)
