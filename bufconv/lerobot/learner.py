"""LeRobot's learner with bufconv's offline buffer: same arguments as `python -m lerobot.rl.learner`.

python -m bufconv.lerobot.learner --config_path train_config.json
"""

from __future__ import annotations

import sys

from .offline import install


def main() -> None:
    try:
        module = install()
    except ImportError as e:
        sys.exit(f"bufconv: error: {e}")
    module.train_cli()


if __name__ == "__main__":
    main()
