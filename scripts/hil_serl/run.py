"""Run LeRobot's actor and learner on gym-hil's PandaPickCube-v0, headless, on 127.0.0.1.

    .venv/bin/python scripts/hil_serl/run.py --workdir /tmp/hil --seconds 120 [--image-range 255] [--stock]

Records the demonstrations if `WORKDIR/demos` is missing (`record_demos.py`), writes a copy of
`train_config.json` with that dataset, a free port and `WORKDIR/train` as output, starts the
learner (`python -m bufconv.lerobot.learner`, or LeRobot's own buffers with `--stock`) and the
actor (`python -m bufconv.lerobot.actor`; LeRobot's `python -m lerobot.rl.actor` with
`--lerobot-actor`), each in its own process group, runs them for `--seconds`, stops both by
their groups and prints the range the encoder saw in each batch half (`encoder_probe.py`).
The tests (tests/test_hil_serl.py) and scripts/bench_startup.py drive the same functions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "train_config.json"
FIXES = HERE / "lerobot_fixes.py"
PROBE = HERE / "encoder_probe.py"
ACTOR_PROBE = HERE / "actor_probe.py"
PYTHON = sys.executable
#: Headless MuJoCo rendering (Debian's libosmesa6); EGL needs a GPU.
RENDER_ENV = {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: LeRobot's default image normalization (VISUAL = MEAN_STD), on ImageNet's stats per camera.
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def write_config(
    path: Path,
    *,
    dataset: Path,
    output_dir: Path,
    port: int,
    resume: bool = False,
    visual: str = "IDENTITY",
    **top: Any,
) -> Path:
    """`train_config.json` with this run's dataset, output folder and port (and top-level overrides).

    `visual="MEAN_STD"` gives the policy LeRobot's default image normalization (ImageNet stats per
    camera) instead of the example's IDENTITY.
    """
    config = json.loads(CONFIG.read_text())
    policy = config["policy"]
    policy["normalization_mapping"]["VISUAL"] = visual
    if visual == "MEAN_STD":
        features = policy["input_features"] or config["env"]["features"]  # the example names them in env
        for key, feature in features.items():
            if feature["type"] == "VISUAL":
                policy["dataset_stats"][config["env"].get("features_map", {}).get(key, key)] = dict(IMAGENET)
    config["dataset"]["root"] = str(dataset)
    config["output_dir"] = str(output_dir)
    config["resume"] = resume
    config["policy"]["actor_learner_config"]["learner_host"] = "127.0.0.1"
    config["policy"]["actor_learner_config"]["learner_port"] = port
    config.update(top)
    path.write_text(json.dumps(config, indent=2))
    return path


def read_port(config: Path) -> int:
    return int(json.loads(config.read_text())["policy"]["actor_learner_config"]["learner_port"])


class Process:
    """A command in its own process group, its output in a log file; stopped by its group."""

    def __init__(self, name: str, cmd: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.cmd, self.log = name, list(cmd), log
        self._out: IO[bytes] = open(log, "ab")  # noqa: SIM115  (closed in stop/kill)
        self.started = time.time()
        self.popen = subprocess.Popen(
            self.cmd,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **RENDER_ENV, **(env or {})},
            start_new_session=True,  # its own process group: its threads' children go with it
        )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # the group is gone already
            os.killpg(self.popen.pid, sig)  # the group id is the pid (start_new_session)

    def kill(self) -> None:
        """SIGKILL the whole group, as a crash or an OOM kill would, and reap it."""
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=30)
        self._out.close()

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGINT (LeRobot's shutdown), then SIGKILL what is left of the group after `grace_s`."""
        if self.alive:
            self.signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace_s)
        self.signal(signal.SIGKILL)  # whatever the group still holds
        self.popen.wait(timeout=30)
        self._out.close()

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def learner(
    config: Path,
    log: Path,
    *,
    probe: Path | None = None,
    stock: bool = False,
    image_range: int | None = None,
    cache: Path | None = None,
) -> Process:
    """`python -m bufconv.lerobot.learner` (with `stock`: LeRobot's own buffers, unguarded)."""
    cmd = [PYTHON, "-m", "bufconv.lerobot.learner", f"--config_path={config}", f"--bufconv.hook={FIXES}"]
    if stock:
        cmd += ["--bufconv.buffers=lerobot", "--bufconv.guard=false"]
    if image_range is not None:
        cmd.append(f"--bufconv.image_range={image_range}")
    if cache is not None:
        cmd.append(f"--bufconv.cache={cache}")
    env = {}
    if probe is not None:
        cmd.append(f"--bufconv.hook={PROBE}")
        env["BUFCONV_PROBE"] = str(probe)
    return Process("learner", cmd, log, env)


def actor(
    config: Path,
    log: Path,
    output_dir: Path,
    *,
    lerobot_actor: bool = False,
    image_range: int | None = None,
    sent: Path | None = None,
) -> Process:
    """`python -m bufconv.lerobot.actor`, or LeRobot's own `python -m lerobot.rl.actor`.

    The actor gets its own output folder: LeRobot's refuses one that exists, and the learner
    creates its own first.
    """
    module = "lerobot.rl.actor" if lerobot_actor else "bufconv.lerobot.actor"
    cmd = [PYTHON, "-m", module, f"--config_path={config}", f"--output_dir={output_dir}"]
    if image_range is not None and not lerobot_actor:
        cmd.append(f"--bufconv.image_range={image_range}")
    env = {}
    if sent is not None:  # the actor's own record of what the learner acknowledged
        cmd.append(f"--bufconv.hook={ACTOR_PROBE}")
        env["BUFCONV_ACTOR_PROBE"] = str(sent)
    return Process("actor", cmd, log, env)


def wait_until(
    condition: Callable[[], Any], timeout_s: float, processes: Sequence[Process], what: str
) -> Any:
    """Poll `condition` until it is truthy; fail with the logs if a process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for p in processes:
            if not p.alive:
                raise RuntimeError(
                    f"{p.name} exited ({p.popen.returncode}) while waiting for {what}:\n{p.tail()}"
                )
        time.sleep(0.5)
    logs = "\n".join(f"--- {p.name}:\n{p.tail(2500)}" for p in processes)
    raise TimeoutError(f"no {what} after {timeout_s:.0f} s\n{logs}")


def read_probe(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line from a killed learner
            continue
    return records


def steps(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") == "step"]


def halves(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The span of values the encoder saw in each batch half, over every training forward."""
    out: dict[str, list[float]] = {}
    for r in records:
        for half in ("online", "offline"):
            if r.get("event") == "encoder" and half in r:
                lo, hi = r[half]
                span = out.setdefault(half, [lo, hi])
                span[0], span[1] = min(span[0], lo), max(span[1], hi)
    return out


def ensure_demos(demos: Path) -> Path:
    if not (demos / "meta" / "info.json").exists():
        subprocess.run(
            [PYTHON, str(HERE / "record_demos.py"), str(demos)],
            check=True,
            env={**os.environ, **RENDER_ENV},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return demos


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=120.0, help="how long both run")
    parser.add_argument("--image-range", type=int, choices=(1, 255), default=None)
    parser.add_argument("--stock", action="store_true", help="the learner keeps LeRobot's own buffers")
    parser.add_argument("--lerobot-actor", action="store_true", help="run LeRobot's own actor")
    args = parser.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    demos = ensure_demos(work / "demos")
    run = work / ("stock" if args.stock else f"bufconv-{args.image_range or 1}")
    run.mkdir(exist_ok=False)
    config = write_config(
        run / "train_config.json", dataset=demos, output_dir=run / "train", port=free_port()
    )
    probe = run / "probe.jsonl"
    processes = [
        learner(config, run / "learner.log", probe=probe, stock=args.stock, image_range=args.image_range)
    ]
    try:
        time.sleep(5)
        processes.append(
            actor(
                config,
                run / "actor.log",
                run / "actor",
                lerobot_actor=args.lerobot_actor,
                image_range=args.image_range,
            )
        )
        end = time.monotonic() + args.seconds
        while time.monotonic() < end and all(p.alive for p in processes):
            time.sleep(1)
    finally:
        for p in reversed(processes):
            p.stop()
    records = read_probe(probe)
    print(f"{run}: {len(steps(records))} optimization steps")
    for half, (lo, hi) in halves(records).items():
        print(f"  encoder input, {half} half: [{lo:g}, {hi:g}]")


if __name__ == "__main__":
    main()
