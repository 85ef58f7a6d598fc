"""The learning loop really teaches: users who rate purple circles highly get more of them,
and the model still knows what a red circle is. Measured with the shapes checker on the
bundled model, through the real service and engine (benchmarks/learning.py is the long run)."""

from __future__ import annotations

import pytest

from benchmarks.learning import Experiment, share

SEEDS = 40


@pytest.mark.parametrize("model", ["bundled:shapes", "bundled:shapes-sd3"])
async def test_rating_purple_circles_highly_teaches_the_model_purple(tmp_path, model):
    bot = await Experiment.start(tmp_path, model)
    try:
        before = await bot.imagine("a circle", range(5_000, 5_000 + SEEDS))
        await bot.rate_by_colour(before, "purple")
        await bot.retrain()
        after = await bot.imagine("a circle", range(6_000, 6_000 + SEEDS))
        red = await bot.imagine("a red circle", range(7_000, 7_000 + SEEDS // 4))
    finally:
        await bot.stop()
    purple_before, purple_after = share(before, "purple"), share(after, "purple")
    assert purple_before <= 0.3, f"purple was already common: {purple_before:.0%}"
    assert purple_after >= 0.4 and purple_after >= purple_before + 0.2, (
        f"purple share {purple_before:.0%} -> {purple_after:.0%}")
    assert purple_after >= 2 * purple_before, f"{purple_before:.0%} -> {purple_after:.0%}"
    assert share(red, "red") >= 0.9, f"a red circle came out red {share(red, 'red'):.0%}"
