"""Streams of actor transitions for the online-buffer tests (as LeRobot's learner receives them)."""

from __future__ import annotations

import torch

FRONT = "observation.images.front"
WRIST = "observation.images.wrist"
STATE = "observation.state"


def stream(lengths: list[int], seed: int = 0, *, uint8: bool = False, truncate_every: int = 3) -> list[dict]:
    """Transitions of consecutive episodes, as LeRobot's learner receives them from the actor.

    Observations are [0,1] floats (LeRobot's convention) made from uint8 pixels, batch dim 1;
    next_state of a step is the same tensor as state of the following step.
    """
    g = torch.Generator().manual_seed(seed)

    def observation() -> dict[str, torch.Tensor]:
        front = torch.randint(0, 256, (1, 3, 12, 16), generator=g, dtype=torch.uint8)
        wrist = torch.randint(0, 256, (1, 3, 8, 8), generator=g, dtype=torch.uint8)
        return {
            FRONT: front if uint8 else front.float() / 255,
            WRIST: wrist if uint8 else wrist.float() / 255,
            STATE: torch.randn((1, 5), generator=g),
        }

    out = []
    for e, length in enumerate(lengths):
        current = observation()
        for i in range(length):
            following = observation()
            last = i == length - 1
            truncated = last and e % truncate_every == truncate_every - 1
            out.append(
                {
                    "state": current,
                    "action": torch.rand((1, 4), generator=g) * 2 - 1,
                    "reward": float(torch.rand((), generator=g)),
                    "next_state": following,
                    "done": last and not truncated,
                    "truncated": truncated,
                    "complementary_info": {
                        "discrete_penalty": float(torch.rand((), generator=g)),
                        "is_intervention": bool(i % 4 == 1),
                    },
                }
            )
            current = following
    return out
