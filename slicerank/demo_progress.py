"""Progress bars shared by the demo's stages."""

from __future__ import annotations

from collections.abc import Callable


def whole_seconds(update: Callable[[int], object]) -> Callable[[float], None]:
    """Feed fractional seconds to a progress bar that counts whole ones."""
    state = {"exact": 0.0, "shown": 0}

    def add(seconds: float) -> None:
        state["exact"] += seconds
        step = int(state["exact"]) - state["shown"]
        if step > 0:
            state["shown"] += step
            update(step)

    return add


def progress_bar(total: float, desc: str, unit: str = "it"):
    """A tqdm bar that stays on screen when done (one per demo stage)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True)
