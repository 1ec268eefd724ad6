"""The image chain (SPEC section 14): pixel maps, normalizers, the chain's paths and findings.

No LeRobot here: configs are the reference JSON (LeRobot 0.6.1 `gaussian_actor`, MEAN_STD on
ImageNet stats per camera), saved pre-processors are written by hand (JSON + safetensors), and
the guard runs on a plain torch module. tests/test_chain_lerobot.py runs LeRobot's own classes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import bufconv
from bufconv.cli import cli
from bufconv.contract.check import check_config
from bufconv.contract.normalizer import IMAGENET, Normalizer, from_policy, read_saved
from bufconv.errors import ConfigError, RangeMismatchError
from bufconv.pixelmap import PixelMap, check_mapped, map_problem
from bufconv.ranges import guard_encoder
from bufconv.source.writer import EpisodeData, write_dataset

REFERENCE = Path("/work/shared/reference/lerobot-gym-hil/train_config.json")
FRONT, WRIST, STATE = "observation.images.front", "observation.images.wrist", "observation.state"
CAMERAS = (FRONT, WRIST)
MEAN, STD = IMAGENET["mean"], IMAGENET["std"]
IMAGENET_TEXT = "(p/255 - [0.485, 0.456, 0.406])/[0.229, 0.224, 0.225] -> [-2.12, 2.64]"
RANGE_1 = [{"registry_name": "bufconv_image_range", "config": {"image_range": 1}}]
RANGE_255 = [{"registry_name": "bufconv_image_range", "config": {"image_range": 255}}]
LEROBOT_CLASSIFIER = [{"registry_name": n} for n in ("observation_processor", "reward_classifier_processor")]


def imagenet(image_range: int = 1) -> PixelMap:
    return from_policy({"VISUAL": "MEAN_STD"}, {FRONT: IMAGENET}, FRONT).after(PixelMap.of_range(image_range))


def reference(**policy: Any) -> dict[str, Any]:
    cfg = json.loads(REFERENCE.read_text())
    cfg["policy"].update(policy)
    return cfg


def codes(report: Any, severity: str | None = None) -> list[str]:
    return [f.code for f in report.findings if severity in (None, f.severity)]


def pixels(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def normalized(x: torch.Tensor, mean: Any = MEAN, std: Any = STD) -> torch.Tensor:
    return (x - torch.tensor(mean).reshape(3, 1, 1)) / torch.tensor(std).reshape(3, 1, 1)


# ---- pixel maps -----------------------------------------------------------------------------


def test_of_range_intervals_and_same_as() -> None:
    one, raw = PixelMap.of_range(1), PixelMap.of_range(255)
    assert one.scale == (1 / 255,) * 3 and one.offset == (0.0,) * 3 and one.describe() == "p/255 -> [0, 1]"
    assert raw.scale == (1.0,) * 3 and raw.describe() == "p -> [0, 255]"
    assert PixelMap.of_range(1, 1).channels == 1
    assert one.interval() == pytest.approx((0.0, 1.0)) and raw.interval() == (0.0, 255.0)
    m = imagenet()
    assert m.describe() == IMAGENET_TEXT
    for (lo, hi), mean, std in zip(m.intervals(), MEAN, STD, strict=True):
        assert (lo, hi) == pytest.approx((-mean / std, (1 - mean) / std))
    assert m.interval() == pytest.approx((-0.485 / 0.229, (1 - 0.406) / 0.225))
    flipped = raw.then([-1.0], [0.0], "-{x}")  # a negative scale: (low, high) still ordered
    assert flipped.interval() == (-255.0, 0.0) and flipped.text == "-p"
    assert raw.then([1 / 255], [0.0], "{x}/255").same_as(one) and one.is_range(1) and raw.is_range(255)
    assert not m.same_as(one) and not one.same_as(PixelMap.of_range(1, 1)) and not m.is_range(1)
    assert not one.same_as(one.then([1.0], [1e-3], "{x} + 0.001"))
    assert one.then([1.0], [-0.5], "{x} - 0.5").then([2.0], [0.0], "2*{x}").text == "2*(p/255 - 0.5)"
    with pytest.raises(ValueError, match="2 channels"):
        one.then([1.0, 2.0], [0.0], "{x}")
    assert m.to_json()["interval"] == pytest.approx(list(m.interval()))


steps = st.lists(
    st.tuples(
        st.lists(st.floats(0.05, 20) | st.floats(-20, -0.05), min_size=3, max_size=3),
        st.lists(st.floats(-10, 10), min_size=3, max_size=3),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(steps, st.sampled_from([1, 255]), st.integers(0, 2**31))
def test_then_composes_like_the_steps_in_sequence(chain: list, image_range: int, seed: int) -> None:
    p = pixels(2, 3, 4, 4, seed=seed)
    m = PixelMap.of_range(image_range)
    expected = p.to(torch.float64) / (255 if image_range == 1 else 1)
    for scale, offset in chain:
        m = m.then(scale, offset, "s*{x} + o")
        expected = expected * torch.tensor(scale, dtype=torch.float64).reshape(3, 1, 1)
        expected = expected + torch.tensor(offset, dtype=torch.float64).reshape(3, 1, 1)
    out = m.apply(p)
    assert out.dtype == torch.float32
    # float32 round-off, relative to the terms of a*p + b (a sum that cancels is not relative to itself)
    a = torch.tensor(m.scale, dtype=torch.float64).reshape(3, 1, 1)
    b = torch.tensor(m.offset, dtype=torch.float64).reshape(3, 1, 1)
    size = (a * p.to(torch.float64)).abs() + b.abs() + 1e-12
    assert ((out.to(torch.float64) - expected).abs() <= 1e-5 * size).all()
    lo, hi = m.interval()
    assert lo - 1e-5 * (hi - lo) <= float(out.min()) and float(out.max()) <= hi + 1e-5 * (hi - lo)


# ---- map_problem and the map-checking guard -------------------------------------------------


def test_map_problem_with_the_imagenet_map() -> None:
    m, images = imagenet(), pixels(4, 3, 16, 16).float()
    assert map_problem(normalized(images / 255), m, name=FRONT) is None
    check_mapped(normalized(torch.zeros(2, 3, 8, 8)), m)  # a black frame
    assert map_problem(m.apply(pixels(2, 3, 8, 8, seed=1)), m) is None
    raw = map_problem(normalized(images), m, name=FRONT, where="learner batch -> policy encoder")
    assert raw is not None and raw.problem == "range-mismatch" and raw.key == FRONT
    assert FRONT in str(raw) and IMAGENET_TEXT in str(raw) and "divide by 255 once" in str(raw)
    assert raw.path_map == f"learner batch -> policy encoder: {IMAGENET_TEXT}"
    twice = map_problem(normalized(images / 255 / 255), m, name=FRONT)
    assert twice is not None and twice.problem == "double-normalized" and "divided by 255 twice" in str(twice)
    nan = normalized(images / 255)
    nan[0, 0, 0, 0] = float("nan")
    assert "NaN" in str(map_problem(nan, m, name=FRONT))
    with pytest.raises(RangeMismatchError, match="normalised twice, with other stats"):
        check_mapped(normalized(images / 255) * 10, m, name=FRONT)
    assert map_problem(torch.empty(0, 3, 8, 8), m) is None
    with pytest.raises(TypeError, match="float images"):
        map_problem(pixels(1, 3, 4, 4), m)


class Encoder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))


def test_guard_checks_each_camera_against_its_map() -> None:
    """LeRobot's SAC encoder takes both cameras as one batch: torch.cat(front, wrist) along dim 0."""
    m_front = imagenet()
    m_wrist = from_policy({"VISUAL": "MIN_MAX"}, {WRIST: {"min": [0.0], "max": [1.0]}}, WRIST)
    m_wrist = m_wrist.after(PixelMap.of_range(1))
    assert m_wrist.interval() == pytest.approx((-1.0, 1.0))
    front, wrist = m_front.apply(pixels(3, 3, 8, 8, seed=2)), m_wrist.apply(pixels(3, 3, 8, 8, seed=3))
    encoder = Encoder()
    where = "offline -> policy"
    handle = guard_encoder(encoder, 1, pixel_maps=[m_front, m_wrist], names=[FRONT, WRIST], where=where)
    encoder(torch.cat([front, wrist]))  # values outside [0,1] pass: each camera is checked against its map
    with pytest.raises(RangeMismatchError) as swapped:
        encoder(torch.cat([wrist, front]))
    assert swapped.value.key == WRIST and "offline -> policy" in str(swapped.value)
    assert m_wrist.describe() in str(swapped.value) and FRONT not in str(swapped.value)
    with pytest.raises(RangeMismatchError) as twice:
        encoder(torch.cat([normalized(pixels(3, 3, 8, 8).float() / 255 / 255), wrist]))
    assert twice.value.key == FRONT and twice.value.problem == "double-normalized"
    handle.remove()
    encoder(torch.cat([wrist, front]))


# ---- normalizers ----------------------------------------------------------------------------


def test_normalizer_from_policy() -> None:
    mean_std = from_policy({"VISUAL": "MEAN_STD"}, {FRONT: IMAGENET}, FRONT)
    assert mean_std.active and mean_std.units == 1 and mean_std.stats["std"] == pytest.approx(STD)
    assert mean_std.after(PixelMap.of_range(1)).same_as(imagenet())
    pixel_stats = {k: [v * 255 for v in vs] for k, vs in IMAGENET.items()}
    in_pixels = from_policy({"VISUAL": "MEAN_STD"}, {FRONT: pixel_stats}, FRONT)
    assert in_pixels.units == 255 and in_pixels.after(PixelMap.of_range(255)).same_as(imagenet())
    min_max = from_policy({"VISUAL": "MIN_MAX"}, {FRONT: {"min": [0.0] * 3, "max": [1.0] * 3}}, FRONT)
    assert min_max.units == 1 and min_max.after(PixelMap.of_range(1)).interval() == pytest.approx((-1.0, 1.0))
    assert from_policy({"VISUAL": "MIN_MAX"}, {FRONT: {"min": [0], "max": [255]}}, FRONT).units == 255
    identity = from_policy({"VISUAL": "IDENTITY"}, {FRONT: IMAGENET}, FRONT)
    assert not identity.active and identity.units is None
    assert identity.after(PixelMap.of_range(1)) == PixelMap.of_range(1)
    assert not from_policy({}, None, FRONT).active  # no VISUAL entry: IDENTITY
    missing = from_policy({"VISUAL": "MEAN_STD"}, {WRIST: IMAGENET}, FRONT)
    assert not missing.active and "passed unchanged" in missing.describe() and missing.units is None
    # LeRobot's SAC default stats (stats=None): ImageNet under observation.image only
    assert from_policy({"VISUAL": "MEAN_STD"}, None, "observation.image").active
    assert not from_policy({"VISUAL": "MEAN_STD"}, None, FRONT).active
    with pytest.raises(ConfigError, match="normalization mode"):
        from_policy({"VISUAL": "SOMETHING"}, {}, FRONT)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        ends = [offset, offset + len(data)]
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": ends}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def saved_preprocessor(folder: Path, mean: Any = MEAN, std: Any = STD, key: str = FRONT) -> Path:
    """A pre-processor saved as lerobot-train saves a reward classifier's, written by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    state = "policy_preprocessor_step_0_normalizer_processor.safetensors"
    step = {
        "registry_name": "normalizer_processor",
        "config": {"eps": 1e-8, "features": {key: {"type": "VISUAL", "shape": [3, 8, 8]}}},
        "state_file": state,
    }
    step["config"]["norm_map"] = {"VISUAL": "MEAN_STD"}
    pipeline = {"name": "policy_preprocessor", "steps": [step]}
    (folder / "policy_preprocessor.json").write_text(json.dumps(pipeline))
    stats = {f"{key}.mean": np.reshape(mean, (3, 1, 1)), f"{key}.std": np.reshape(std, (3, 1, 1))}
    write_safetensors(folder / state, stats)
    return folder


def test_read_saved_preprocessor(tmp_path: Path) -> None:
    (normalizer,) = read_saved(saved_preprocessor(tmp_path / "classifier")).values()
    assert read_saved(tmp_path / "classifier").keys() == {FRONT}
    assert isinstance(normalizer, Normalizer) and normalizer.mode == "MEAN_STD" and normalizer.units == 1
    assert normalizer.stats["mean"] == pytest.approx(MEAN) and normalizer.stats["std"] == pytest.approx(STD)
    assert "policy_preprocessor.json" in normalizer.where
    assert normalizer.after(PixelMap.of_range(1)).same_as(imagenet())
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "nowhere"):
        with pytest.raises(ConfigError, match="no saved pre-processor"):
            read_saved(folder)


# ---- the chain of a config (no offline data) ------------------------------------------------


def links(report: Any, network: str = "policy") -> dict[tuple[str, str], Any]:
    return {(link.path, link.key): link for link in report.chain if link.network == network}


def test_reference_config_at_range_1_is_ok() -> None:
    report = check_config(reference(), image_range=1)
    assert report.ok and report.findings == [] and report.kind == "config"
    assert set(links(report)) == {(path, key) for path in ("online", "actor") for key in CAMERAS}
    for link in report.chain:
        assert link.first_layer.interval() == pytest.approx((-2.12, 2.64), abs=6e-3)
        assert link.encoder_input is None
    expected = [f"{path} -> policy [{FRONT}, {WRIST}]: {IMAGENET_TEXT}" for path in ("online", "actor")]
    assert report.chain_lines() == expected


def test_reference_config_at_range_255_is_refused() -> None:
    report = check_config(reference(), image_range=255)
    assert codes(report, "error") == ["normalizer-range-mismatch"] * 2
    assert [f.details["key"] for f in report.findings] == list(CAMERAS)
    for finding in report.findings:
        assert "normalization_mapping.VISUAL=IDENTITY" in finding.message and "[0,1] units" in finding.message


def test_identity_at_range_255_and_stats_in_pixel_units() -> None:
    report = check_config(reference(normalization_mapping={"VISUAL": "IDENTITY"}), image_range=255)
    assert report.ok and report.findings == []
    for link in report.chain:
        assert link.first_layer.describe() == "p/255 - 0.5 -> [-0.5, 0.5]"
        assert link.encoder_input is not None and link.encoder_input.describe() == "p -> [0, 255]"
    pixel_stats = {k: {name: [v * 255 for v in vs] for name, vs in IMAGENET.items()} for k in CAMERAS}
    twice = check_config(reference(dataset_stats=pixel_stats), image_range=255)
    assert codes(twice) == ["normalizer-range-mismatch"] * 2
    assert all("normalised twice" in f.message for f in twice.findings)
    # pixel-unit stats on [0,1] images: refused too
    assert check_config(reference(dataset_stats=pixel_stats), image_range=1).errors


def test_lerobot_defaults_without_normalization_mapping() -> None:
    """gaussian_actor without normalization fields: MEAN_STD on ImageNet stats under observation.image only."""
    cfg = reference()
    del cfg["policy"]["normalization_mapping"], cfg["policy"]["dataset_stats"]
    report = check_config(cfg, image_range=255)
    assert report.ok
    for link in report.chain:
        assert link.steps[1].startswith("MEAN_STD without stats for this key: passed unchanged")
        assert link.encoder_input is not None and link.encoder_input.is_range(255)


def test_config_alone_refuses_an_actor_in_the_other_range() -> None:
    report = check_config(reference(), processor=RANGE_255)  # the policy's range: 1 (LeRobot's default)
    assert links(report)[("online", FRONT)].first_layer.interval()[1] > 1000  # the chain shows it...
    assert "path-mismatch" in codes(report) and not report.ok  # ...and a finding says it


# ---- the classifier's paths -----------------------------------------------------------------


def with_classifier(path: Path) -> dict[str, Any]:
    cfg = reference()
    cfg["env"]["processor"]["reward_classifier"] = {"pretrained_path": str(path)}
    return cfg


def test_classifier_paths(tmp_path: Path) -> None:
    cfg = with_classifier(saved_preprocessor(tmp_path / "classifier"))
    report = check_config(cfg)
    assert report.ok and report.findings == []
    classifier = links(report, "reward classifier")
    assert set(classifier) == {("classifier training", FRONT), ("actor", FRONT)}
    training = classifier[("classifier training", FRONT)].first_layer
    assert classifier[("actor", FRONT)].first_layer.same_as(training) and training.describe() == IMAGENET_TEXT
    assert check_config(cfg, processor=[{"registry_name": "bufconv_reward_classifier"}]).findings == []

    lerobot = check_config(cfg, processor=LEROBOT_CLASSIFIER)
    assert lerobot.ok and codes(lerobot, "warning") == ["classifier-input-mismatch"]
    assert links(lerobot, "reward classifier")[("actor", FRONT)].first_layer.describe() == "p/255 -> [0, 1]"

    # (a range-255 step into this range-1 policy is also a path-mismatch: the classifier's codes here)
    ranged = check_config(cfg, processor=[LEROBOT_CLASSIFIER[0], *RANGE_255, LEROBOT_CLASSIFIER[1]])
    assert [c for c in codes(ranged, "error") if c != "path-mismatch"] == ["classifier-input-mismatch"]
    (error,) = [f for f in ranged.errors if f.code == "classifier-input-mismatch"]
    assert "image_range=255" in error.message and "Move the range step after" in error.message
    after = check_config(cfg, processor=[*LEROBOT_CLASSIFIER, *RANGE_255])  # the range step after it
    assert codes(after, "warning") == ["classifier-input-mismatch"]

    unknown = check_config(with_classifier(tmp_path / "nowhere"))
    assert unknown.ok and codes(unknown, "warning") == ["classifier-input-mismatch"]
    assert "training path is unknown" in unknown.findings[0].message
    assert not links(unknown, "reward classifier")


# ---- against a cache: path-mismatch, and the CLI --------------------------------------------


@pytest.fixture(scope="module")
def cache_255(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(5)
    episodes = [
        EpisodeData(
            {
                FRONT: rng.integers(0, 256, (n, 24, 32, 3), dtype=np.uint8),
                STATE: rng.standard_normal((n, 4)).astype(np.float32),
                "action": rng.random((n, 4)).astype(np.float32),
                "next.reward": np.zeros(n, np.float32),
                "next.done": np.arange(n) == n - 1,
            }
        )
        for n in (6, 4)
    ]
    root = write_dataset(tmp_path_factory.mktemp("chain") / "dataset", episodes, fps=10)
    return bufconv.build(root, tmp_path_factory.mktemp("chain") / "offline_buffer.pt", image_range=255).path


def cache_config(visual: str = "IDENTITY") -> dict[str, Any]:
    cfg = reference(normalise_inputs=True)
    cfg["policy"]["normalization_mapping"]["VISUAL"] = visual
    features = {FRONT: [3, 24, 32], STATE: [4], "action": [4]}
    kinds = {FRONT: "VISUAL", STATE: "STATE", "action": "ACTION"}
    cfg["env"]["features"] = {k: {"type": kinds[k], "shape": s} for k, s in features.items()}
    cfg["env"]["features_map"] = {k: k for k in features}
    return cfg


def test_path_mismatch_between_offline_and_online(cache_255: Path) -> None:
    cfg = cache_config()
    report = bufconv.check(cache_255, cfg)
    assert report.ok and report.findings == [], report.findings
    assert {link.path for link in report.chain} == {"offline", "online", "actor"}
    assert bufconv.check(cache_255, cfg, processor=RANGE_255).ok
    for processor in (RANGE_1, [{"registry_name": "observation_processor"}]):  # no range step: [0,1]
        mismatch = bufconv.check(cache_255, cfg, processor=processor)
        (finding,) = mismatch.findings
        assert (finding.code, finding.severity, finding.details["key"]) == ("path-mismatch", "error", FRONT)
        assert finding.details["paths"] == ["online", "actor"]  # against the offline half and the policy
        assert "p/255 - 0.5 -> [-0.5, 0.5]" in finding.message and "p/255/255 - 0.5" in finding.message


def test_cli_check_prints_the_chain(cache_255: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    good, bad = tmp_path / "identity.json", tmp_path / "mean_std.json"
    good.write_text(json.dumps(cache_config()))
    bad.write_text(json.dumps(cache_config("MEAN_STD")))
    text = runner.invoke(cli, ["check", str(cache_255), "--config", str(good)])
    assert text.exit_code == 0, text.output
    assert "image chain" in text.output
    line = f"offline -> policy [{FRONT}]: p/255 - 0.5 -> [-0.5, 0.5] (the encoder's input: p -> [0, 255])"
    assert line in text.output
    as_json = runner.invoke(cli, ["check", str(cache_255), "--config", str(good), "--json"])
    assert as_json.exit_code == 0, as_json.output
    chain = json.loads(as_json.output)["chain"]
    assert [entry["path"] for entry in chain] == ["offline", "online", "actor"]
    for entry in chain:
        assert {"path", "network", "key", "scale", "offset", "interval"} <= set(entry)
        assert entry["network"] == "policy" and entry["key"] == FRONT
        assert len(entry["scale"]) == len(entry["offset"]) == 3
        assert entry["interval"] == pytest.approx([-0.5, 0.5])
        assert entry["encoder_input"]["interval"] == [0.0, 255.0]
    refused = runner.invoke(cli, ["check", str(cache_255), "--config", str(bad)])
    assert refused.exit_code == 1 and "[normalizer-range-mismatch] error:" in refused.output
    assert "image chain" in refused.output and "normalization_mapping.VISUAL=IDENTITY" in refused.output
    report = json.loads(runner.invoke(cli, ["check", str(cache_255), "--config", str(bad), "--json"]).output)
    assert report["ok"] is False and [f["code"] for f in report["findings"]] == ["normalizer-range-mismatch"]
