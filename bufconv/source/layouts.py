"""Finding and opening a LeRobot dataset: repo id or folder, layout v3.0 or v2.1.

`open_dataset` reads meta/info.json and the episode table (v3.0: meta/episodes/*.parquet;
v2.1: meta/episodes.jsonl), and builds each episode's data and video paths from the templates
in info.json. Data is read later, by `SourceDataset`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DatasetError, UnsupportedVersionError
from .dataset import (
    INFO_PATH,
    SUPPORTED_VERSIONS,
    V21_EPISODES_PATH,
    V30_EPISODES_GLOB,
    Episode,
    SourceDataset,
)

_NOT_A_DATASET = "{root} is not a LeRobot dataset: {why}. Point DATASET at the folder that holds meta/info.json (or pass a repo id)."
_UNSUPPORTED = "{path}: codebase_version {found!r} is not supported; bufconv reads {expected}. {fix}"
_FIX_OLDER = "Convert it with LeRobot's converters first (lerobot/scripts/convert_dataset_v21_to_v30.py, after v20_to_v21 for v2.0)"
_FIX_NEWER = "The dataset is newer than this bufconv: upgrade bufconv"
_INCOMPLETE_INFO = (
    "{path}: {what}; LeRobot writes 'codebase_version', 'fps' and 'features' there. The file is "
    "incomplete or damaged: re-download the dataset or restore meta/info.json"
)
_NO_EPISODE_TABLE = (
    "{root}: meta/info.json says codebase_version {version!r}, but its episode table ({table}) "
    "is missing: the dataset is incomplete; re-download it"
)
_LAYOUT_EVIDENCE = {
    "v3.0": f"{V30_EPISODES_GLOB}, no {V21_EPISODES_PATH}",
    "v2.1": f"{V21_EPISODES_PATH}, no meta/episodes/",
}


def lerobot_home() -> Path:
    """Where LeRobot keeps datasets by repo id: $HF_LEROBOT_HOME, else $HF_HOME/lerobot."""
    if "HF_LEROBOT_HOME" in os.environ:
        return Path(os.environ["HF_LEROBOT_HOME"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(hf_home).expanduser() / "lerobot"


def _looks_like_repo_id(text: str) -> bool:
    if text.startswith((".", "/", "~")) or (os.sep == "\\" and "\\" in text):
        return False
    parts = text.split("/")
    return len(parts) == 2 and all(parts)


def resolve_root(dataset: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """Turn the DATASET argument into (local folder, repo id or None), downloading if needed.

    Raises:
        DatasetError: the folder does not exist and the repo id cannot be fetched.
    """
    text = os.fspath(dataset)
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve(), None
    if not _looks_like_repo_id(text):
        raise DatasetError(
            f"{path}: no such folder; pass a LeRobot dataset folder or a repo id like 'user/name'", path=path
        )
    local = lerobot_home() / text
    if local.is_dir():
        return local.resolve(), text
    _download(text, local)
    return local.resolve(), text


def _download(repo_id: str, local: Path) -> None:
    fix = f"download it (huggingface-cli download --repo-type dataset {repo_id} --local-dir {local}) or pass a local folder"
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise DatasetError(
            f"{repo_id}: not on disk at {local}, and huggingface_hub is not installed to fetch it; {fix}",
            path=local,
        ) from None
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise DatasetError(f"{repo_id}: not on disk at {local}, and HF_HUB_OFFLINE is set; {fix}", path=local)
    # Into a sibling first, renamed when complete: an interrupted download never looks like a dataset.
    partial = local.with_name(f".{local.name}.partial")
    try:
        local.parent.mkdir(parents=True, exist_ok=True)
        snapshot_download(repo_id, repo_type="dataset", local_dir=partial)
        partial.rename(local)
    except Exception as e:  # the hub client raises many types; all mean "could not fetch"
        raise DatasetError(
            f"{repo_id}: not on disk at {local}, and fetching it from the Hugging Face hub failed "
            f"({type(e).__name__}: {e}); {fix}",
            path=local,
        ) from e


def open_dataset(dataset: str | os.PathLike[str]) -> SourceDataset:
    """Open a LeRobot dataset (v3.0 or v2.1) by folder or repo id, reading only its metadata.

    Raises:
        DatasetError: the folder is not a LeRobot dataset or its metadata is inconsistent.
        UnsupportedVersionError: the codebase version is neither v3.0 nor v2.1.
    """
    root, repo_id = resolve_root(dataset)
    info_path = root / INFO_PATH
    if not info_path.is_file():
        raise DatasetError(_NOT_A_DATASET.format(root=root, why="there is no meta/info.json"), path=root)
    try:
        info = json.loads(info_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(
            f"{info_path}: unreadable JSON ({e}); re-download the dataset", path=info_path
        ) from e
    if not isinstance(info, dict):
        raise DatasetError(
            _INCOMPLETE_INFO.format(
                path=info_path, what=f"holds a JSON {type(info).__name__}, not an object"
            ),
            path=info_path,
        )
    missing = [key for key in ("features", "fps") if key not in info]
    if missing or not isinstance(info["features"], dict):
        what = (
            f"has no {' or '.join(repr(k) for k in missing)} key"
            if missing
            else "has a 'features' entry that is not an object"
        )
        raise DatasetError(_INCOMPLETE_INFO.format(path=info_path, what=what), path=info_path)
    on_disk = _layouts_on_disk(root)
    if "codebase_version" not in info:
        guess = f" (this folder has the {on_disk[0]} layout)" if len(on_disk) == 1 else ""
        raise DatasetError(
            f"{info_path}: has no 'codebase_version' key, so the layout is unknown; bufconv reads "
            f"{' and '.join(SUPPORTED_VERSIONS)}. Add the version the dataset was written with{guess}, "
            "or re-download it",
            path=info_path,
        )
    version = str(info["codebase_version"])
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersionError(
            _UNSUPPORTED.format(
                path=info_path,
                found=version,
                expected=" and ".join(SUPPORTED_VERSIONS),
                fix=_FIX_NEWER if _is_newer(version) else _FIX_OLDER,
            ),
            path=info_path,
            found=version,
            expected=SUPPORTED_VERSIONS,
        )
    if on_disk and version not in on_disk:
        raise DatasetError(
            f"{info_path}: codebase_version is {version!r}, but the folder has the {on_disk[0]} layout "
            f"({_LAYOUT_EVIDENCE[on_disk[0]]}): the label and the layout disagree. If the dataset was "
            f"converted, set codebase_version to {on_disk[0]!r}; otherwise re-download it",
            path=info_path,
        )
    video_keys = [k for k, f in info["features"].items() if f.get("dtype") == "video"]
    if video_keys and not info.get("video_path"):
        raise DatasetError(f"{info_path}: video features but no 'video_path' template", path=info_path)
    if not info.get("data_path"):
        raise DatasetError(f"{info_path}: no 'data_path' template", path=info_path)
    episodes = (
        _episodes_v30(root, info, video_keys) if version == "v3.0" else _episodes_v21(root, info, video_keys)
    )
    return SourceDataset(root, info, episodes, repo_id)


def _layouts_on_disk(root: Path) -> list[str]:
    """The layouts whose episode table the folder holds: ["v3.0"], ["v2.1"], both or neither."""
    found = []
    if next(root.glob(V30_EPISODES_GLOB), None) is not None:
        found.append("v3.0")
    if (root / V21_EPISODES_PATH).is_file():
        found.append("v2.1")
    return found


def _episodes_v30(root: Path, info: dict[str, Any], video_keys: Sequence[str]) -> dict[int, Episode]:
    files = sorted(root.glob(V30_EPISODES_GLOB))
    if not files:
        raise DatasetError(
            _NO_EPISODE_TABLE.format(root=root, version="v3.0", table=V30_EPISODES_GLOB),
            path=root / "meta/episodes",
        )
    columns = ["episode_index", "length", "data/chunk_index", "data/file_index"]
    for key in video_keys:
        columns += [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
    rows: list[dict[str, Any]] = []
    for path in files:
        try:
            file = pq.ParquetFile(path)
            names = file.schema_arrow.names
            missing = [c for c in columns if c not in names]
            if missing:
                raise DatasetError(
                    f"{path}: episode table lacks {', '.join(missing)}; the dataset is inconsistent",
                    path=path,
                )
            rows += file.read(columns=columns).to_pylist()
        except (OSError, pa.ArrowException) as e:
            raise DatasetError(
                f"{path}: cannot read the episode table ({e}); re-download the dataset", path=path
            ) from e
    episodes: dict[int, Episode] = {}
    for row in rows:
        data_path = _format(
            info["data_path"], root, chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
        )
        videos = {
            key: (
                _format(
                    info["video_path"],
                    root,
                    video_key=key,
                    chunk_index=row[f"videos/{key}/chunk_index"],
                    file_index=row[f"videos/{key}/file_index"],
                ),
                float(row[f"videos/{key}/from_timestamp"]),
            )
            for key in video_keys
            if row[f"videos/{key}/chunk_index"] is not None
        }
        episodes[int(row["episode_index"])] = Episode(
            int(row["episode_index"]), int(row["length"]), data_path, videos
        )
    return episodes


def _episodes_v21(root: Path, info: dict[str, Any], video_keys: Sequence[str]) -> dict[int, Episode]:
    path = root / V21_EPISODES_PATH
    if not path.is_file():
        raise DatasetError(
            _NO_EPISODE_TABLE.format(root=root, version="v2.1", table=V21_EPISODES_PATH), path=root
        )
    chunks_size = int(info.get("chunks_size", 1000))
    episodes: dict[int, Episode] = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: unreadable ({e}); re-download the dataset", path=path) from e
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            index, length = int(row["episode_index"]), int(row["length"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DatasetError(
                f"{path}:{number}: not an episode record ({e}); re-download the dataset", path=path
            ) from e
        fields = {"episode_chunk": index // chunks_size, "episode_index": index}
        videos = {
            key: (_format(info["video_path"], root, video_key=key, **fields), 0.0) for key in video_keys
        }
        episodes[index] = Episode(index, length, _format(info["data_path"], root, **fields), videos)
    return episodes


def _format(template: str, root: Path, **fields: Any) -> str:
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise DatasetError(
            f"{root / INFO_PATH}: path template {template!r} uses an unknown field ({e})",
            path=root / INFO_PATH,
        ) from e


def _is_newer(version: str) -> bool:
    """Whether a codebase version string like 'v4.0' is newer than every supported one."""
    try:
        found = tuple(int(part) for part in version.lstrip("v").split("."))
    except ValueError:
        return False
    return all(found > tuple(int(p) for p in v.lstrip("v").split(".")) for v in SUPPORTED_VERSIONS)
