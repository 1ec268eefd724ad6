"""bufconv held against one LeRobot release (the one installed in this venv; scripts/compat.sh).

Everything is LeRobot's own code of that release: its writer writes the dataset (v2.1 for 0.3.x,
v3.0 later), its reader decodes the frames, its `ReplayBuffer.from_lerobot_dataset` makes the
transitions, its learner module and config classes drive the learner drop-in, and its reader
reads back what `bufconv export` wrote.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import lerobot_release as release
import pytest
import torch
from lerobot_release import FRONT, LENGTHS, STATE, VERSION, WRIST

import bufconv
from bufconv.errors import RangeMismatchError
from bufconv.lerobot import releases

FRAMES = sum(LENGTHS)
KEYS = [FRONT, WRIST, STATE]
BUFCONV = str(Path(sys.executable).with_name("bufconv"))


def table() -> releases.Release:
    (row,) = [r for r in releases.RELEASES if r.version == VERSION]
    return row


def run(*args: str) -> str:
    done = subprocess.run([BUFCONV, *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, (
        f"bufconv {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


@pytest.fixture(scope="module")
def oracle(dataset: Path) -> tuple[list[dict[str, Any]], Any]:
    """The release's decode of every frame, and its `from_lerobot_dataset` of the dataset."""
    lerobot_dataset = release.read_dataset(dataset)
    items = [lerobot_dataset[i] for i in range(len(lerobot_dataset))]
    buffer = release.from_lerobot_dataset(lerobot_dataset, KEYS)
    assert len(items) == len(buffer) == FRAMES
    return items, buffer


# ---------------------------------------------------------------------------------------------
# the release itself, and what bufconv says of it


def test_the_release_is_supported_and_writes_its_layout(dataset: Path) -> None:
    """The installed release is one of bufconv's, its writer wrote the layout the table names."""
    assert VERSION in releases.SUPPORTED
    assert releases.check_installed() == VERSION
    info = json.loads((dataset / "meta/info.json").read_text())
    assert info["codebase_version"] == release.codebase_version() == table().layout
    if table().layout == "v2.1":
        assert (dataset / "meta/episodes.jsonl").is_file()
        assert sorted(p.name for p in (dataset / "data/chunk-000").iterdir())[0] == "episode_000000.parquet"
    else:
        assert (dataset / "meta/tasks.parquet").is_file()
    from bufconv.lerobot.compat import learner_module

    assert learner_module().__name__ == table().modules.split(", ")[0] == release.learner_module().__name__


def test_an_older_release_is_refused_naming_the_supported_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    from bufconv.lerobot import compat

    with pytest.raises(releases.UnsupportedReleaseError, match=re.escape(", ".join(releases.SUPPORTED))):
        releases.check_version("0.2.0")
    releases.check_version("0.3.3")
    releases.check_version("0.7.0")  # newer: accepted; a layout it lacks is said on import
    monkeypatch.setattr(releases, "installed_version", lambda: "0.1.0")
    with pytest.raises(
        ImportError, match=r"LeRobot 0\.1\.0 is installed; bufconv supports LeRobot 0\.3\.3, "
    ):
        compat.learner_module()


def test_the_lerobot_extra_names_only_extras_this_release_has() -> None:
    """`pip install bufconv[lerobot]` installs cleanly here: every extra it asks of lerobot exists."""
    provided = set(metadata.metadata("lerobot").get_all("Provides-Extra") or [])
    wanted = [
        r for r in metadata.requires("bufconv") or [] if re.search(r"extra\s*==\s*['\"]lerobot['\"]", r)
    ]
    lerobot = [r for r in wanted if re.match(r"lerobot\b", r)]
    assert len(lerobot) == 1, wanted
    extras = re.match(r"lerobot\[([^\]]*)\]", lerobot[0])
    asked = {e.strip() for e in extras.group(1).split(",")} if extras else set()
    assert asked <= provided, f"lerobot {VERSION} has no extra {sorted(asked - provided)}"


def test_the_install_built_the_one_pass_kernel_for_this_python() -> None:
    """setup.py's optional extension built with this release's Python (3.10 for 0.3.x), and it
    gives numpy's pixels, min and max (tests/test_pixelpass.py holds it against to_uint8)."""
    import numpy as np

    from bufconv.buffer import pixelpass

    assert pixelpass.COMPILED, f"bufconv.buffer._pixelpass was not built for Python {sys.version.split()[0]}"
    src = (np.random.default_rng(0).integers(0, 256, 3 * 17 * 19) / 255).astype(np.float32)
    fast, slow = np.empty(src.shape, np.uint8), np.empty(src.shape, np.uint8)
    assert pixelpass.to_uint8_into(src, fast, 255.0) == pixelpass.numpy_to_uint8_into(src, slow, 255.0)
    assert np.array_equal(fast, slow)


# ---------------------------------------------------------------------------------------------
# the cache against the release's own reader and replay buffer


def test_build_verify_info_on_the_release_dataset(dataset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "offline_buffer.pt"
    out = run("build", str(dataset), "-o", str(cache), "--range", "255")
    assert f"{FRAMES} frames, {len(LENGTHS)} episodes" in out, out
    assert bufconv.build(dataset, cache, image_range=255).status == "hit"
    verified = run("verify", str(cache), "--dataset", str(dataset), "--range", "255")
    assert ": ok (" in verified and "freshness" in verified, verified
    info = run("info", str(cache))
    assert str(FRAMES) in info and FRONT in info and WRIST in info, info
    assert bufconv.build(dataset, cache, image_range=1).status == "rebuilt"


def test_frames_equal_the_release_decode(dataset: Path, oracle, tmp_path: Path) -> None:
    """Every stored uint8 frame is the release's PyAV decode (video) or PNG read (image), before its /255."""
    items, _ = oracle
    cache = tmp_path / "c.pt"
    bufconv.build(dataset, cache, workers=1)
    top = torch.load(cache, weights_only=True, mmap=True)
    tensors = top["tensors"]
    for key in (FRONT, WRIST):
        stored = tensors[key]
        assert stored.dtype == torch.uint8 and tuple(stored.shape) == (FRAMES, *items[0][key].shape)
        for i, item in enumerate(items):
            assert torch.equal(stored[i].float() / 255, item[key]), f"{key} frame {i}"
    for i, item in enumerate(items):
        assert torch.equal(tensors[STATE][i], item[STATE])
        assert torch.equal(tensors["action"][i], item["action"])
        assert tensors["episode_index"][i] == item["episode_index"]
        assert tensors["timestamp"][i] == item["timestamp"]


def test_transitions_equal_the_release_replay_buffer(dataset: Path, oracle, tmp_path: Path) -> None:
    """Every transition equals what the release's `ReplayBuffer.from_lerobot_dataset` stored."""
    _, theirs = oracle
    cache = tmp_path / "c.pt"
    bufconv.build(dataset, cache, workers=1)
    buf = bufconv.open_buffer(cache, use_drq=False)
    ours = buf[list(range(FRAMES))]
    for key in KEYS:
        for side, their_side in (("state", theirs.states), ("next_state", theirs.next_states)):
            assert torch.equal(ours[side][key], their_side[key][:FRAMES]), f"{side}[{key}]"
    assert torch.equal(ours["action"], theirs.actions[:FRAMES])
    assert torch.equal(ours["reward"], theirs.rewards[:FRAMES])
    assert torch.equal(ours["done"], theirs.dones[:FRAMES].float())
    assert sorted(ours["complementary_info"]) == sorted(theirs.complementary_info_keys)
    for key in theirs.complementary_info_keys:
        assert torch.equal(ours["complementary_info"][key], theirs.complementary_info[key][:FRAMES]), key


# ---------------------------------------------------------------------------------------------
# the learner drop-in, with the release's learner module and config classes


@pytest.fixture
def learner(monkeypatch: pytest.MonkeyPatch):
    """The release's learner module with bufconv installed; its policy/optimizer saving stubbed."""
    from bufconv.lerobot import install

    module = release.learner_module()
    for name in ("initialize_offline_replay_buffer", "initialize_replay_buffer", "save_training_checkpoint"):
        monkeypatch.setattr(module, name, getattr(module, name))
    saved: list[int] = []
    monkeypatch.setattr(module, "save_checkpoint", lambda **kwargs: saved.append(kwargs["step"]))
    monkeypatch.setattr(module, "update_last_checkpoint", lambda checkpoint_dir: None)
    monkeypatch.setattr(module, "write_json", lambda data, path: None, raising=False)  # 0.4 and later
    install(module)
    module.saved_steps = saved
    return module


def transitions(count: int, seed: int) -> list[dict[str, Any]]:
    """Actor transitions shaped like the config's features, images in [0,1], episodes of 4."""
    g = torch.Generator().manual_seed(seed)

    def observation() -> dict[str, torch.Tensor]:
        images = {
            k: torch.randint(0, 256, (1, 3, *release.SHAPES[k]), generator=g).float() / 255
            for k in (FRONT, WRIST)
        }
        return {**images, STATE: torch.randn((1, 6), generator=g)}

    out, current = [], observation()
    for i in range(count):
        following = observation()
        out.append(
            {
                "state": current,
                "action": torch.rand((1, 3), generator=g),
                "reward": float(i),
                "next_state": following,
                "done": i % 4 == 3,
                "truncated": False,
                "complementary_info": {"is_intervention": float(i % 3 == 0)},
            }
        )
        current = observation() if i % 4 == 3 else following
    return out


def test_learner_drop_in_start_add_checkpoint_resume(dataset: Path, tmp_path: Path, learner) -> None:
    cfg = release.make_config(dataset, tmp_path / "outputs" / "train")
    cfg.policy.online_buffer_capacity = 50
    online = learner.initialize_replay_buffer(cfg, "cpu", "cpu")
    offline = learner.initialize_offline_replay_buffer(cfg, "cpu", "cpu")
    assert (online.status, len(online), offline.status, len(offline)) == ("new", 0, "built", FRAMES)
    stream = transitions(30, seed=1)
    interventions = [t for t in stream if t["complementary_info"]["is_intervention"]]
    for t in stream:
        online.add(**t)
        if t["complementary_info"]["is_intervention"]:
            offline.add(**t)  # as the learner copies interventions
    kwargs = {"offline_replay_buffer": offline, "dataset_repo_id": cfg.dataset.repo_id, "fps": 10}
    learner.save_training_checkpoint(cfg, 7, 30, None, None, {}, online, **kwargs)
    output = Path(cfg.output_dir)
    assert learner.saved_steps == [7]  # the release's own policy part ran
    assert (output / "online_buffer" / "manifest.json").is_file()
    assert (output / "offline_added" / "manifest.json").is_file()
    assert not (output / "dataset").exists() and not (output / "dataset_offline").exists()
    online.close()
    offline.close()

    cfg.resume = True
    resumed = learner.initialize_replay_buffer(cfg, "cpu", "cpu")
    resumed_offline = learner.initialize_offline_replay_buffer(cfg, "cpu", "cpu")
    assert (resumed.status, resumed.lost, len(resumed)) == ("resumed", 0, len(stream))
    assert resumed_offline.status == "hit"
    assert len(resumed_offline) == FRAMES + len(interventions)
    back = resumed[list(range(len(stream)))]
    for key in KEYS:
        assert torch.equal(back["state"][key], torch.cat([t["state"][key] for t in stream])), key
    assert torch.equal(back["action"], torch.cat([t["action"] for t in stream]))
    bad = dict(stream[0], state={**stream[0]["state"], FRONT: stream[0]["state"][FRONT] * 255})
    with pytest.raises(RangeMismatchError):
        resumed.add(**bad)
    resumed.close()
    resumed_offline.close()


# ---------------------------------------------------------------------------------------------
# bufconv's buffers written with the release's writer, read back by the release


def test_export_is_read_back_by_the_release(dataset: Path, tmp_path: Path) -> None:
    """`bufconv export` writes the release's own layout; its reader and replay buffer read it back equal."""
    cache = tmp_path / "c.pt"
    bufconv.build(dataset, cache, image_range=255)
    out = tmp_path / "exported"
    assert f"exported {FRAMES} transitions" in run("export", str(cache), "--lerobot", str(out))
    assert json.loads((out / "meta/info.json").read_text())["codebase_version"] == table().layout
    back = release.read_dataset(out)
    assert len(back) == FRAMES and back.num_episodes == len(LENGTHS)
    ours = bufconv.open_buffer(cache, use_drq=False)[list(range(FRAMES))]
    theirs = release.from_lerobot_dataset(back, KEYS)
    for key in KEYS:
        expected = ours["state"][key] / 255 if key != STATE else ours["state"][key]
        assert torch.equal(theirs.states[key][:FRAMES], expected), key
    assert torch.equal(theirs.actions[:FRAMES], ours["action"])
    assert torch.equal(theirs.rewards[:FRAMES], ours["reward"])


def test_online_buffer_to_lerobot_dataset_with_the_release_writer(tmp_path: Path) -> None:
    online = bufconv.OnlineBuffer(capacity=20, state_keys=KEYS)
    stream = transitions(9, seed=3)
    for t in stream:
        online.add(**t)
    written = online.to_lerobot_dataset(repo_id="bufconv/online", fps=10, root=tmp_path / "online")
    assert written.num_episodes == 3  # two done episodes of 4, and the last frame
    back = release.read_dataset(tmp_path / "online")
    assert len(back) == 9
    for i, t in enumerate(stream):
        assert torch.equal(back[i][FRONT], t["state"][FRONT][0]), i
        assert torch.equal(back[i]["action"], t["action"][0]), i


# ---------------------------------------------------------------------------------------------
# the processor step


def test_image_range_processor_step() -> None:
    """Imports on every release; where the release has processor pipelines it converts and checks,
    on one without (0.3.x) making it says so."""
    from bufconv.lerobot import ImageRangeProcessorStep
    from bufconv.lerobot.compat import processor_step_api

    image = torch.rand(1, 3, 8, 8)
    if processor_step_api() is None:
        assert table().layout == "v2.1"  # only 0.3.x lacks them
        with pytest.raises(ImportError, match=rf"LeRobot {re.escape(VERSION)} has none: its RL actor"):
            ImageRangeProcessorStep(image_range=255)
        return
    from lerobot.processor import TransitionKey

    step = ImageRangeProcessorStep(image_range=255)
    out = step({TransitionKey.OBSERVATION: {FRONT: image, STATE: torch.zeros(1, 6)}})
    assert torch.allclose(out[TransitionKey.OBSERVATION][FRONT], image * 255)
    with pytest.raises(RangeMismatchError):
        step({TransitionKey.OBSERVATION: {FRONT: image * 255}})


def test_the_readme_support_table_is_the_release_list() -> None:
    """README's support table names the releases of `bufconv.lerobot.releases`, with their Python and layout."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    rows = re.findall(r"^\| (\d+\.\d+\.\d+) \| (3\.\d+) \| (v\d\.\d) \|", readme, re.MULTILINE)
    assert rows == [(r.version, r.python, r.layout) for r in releases.RELEASES]
