"""LeRobot's learner with bufconv's offline buffer: same arguments as `python -m lerobot.rl.learner`.

python -m bufconv.lerobot.learner --config_path train_config.json
"""

from __future__ import annotations

from .offline import install


def main() -> None:
    module = install()
    module.train_cli()


if __name__ == "__main__":
    main()
