"""One synthetic slide in memory: its random streams, layout and rendered RGB level 0.

The generator version and slide mpp live here, with the rendering they describe: a change to
any layout or texture must bump `GENERATOR_VERSION` (manifests record it).
"""

from __future__ import annotations

import numpy as np

from datamodules.synthetic.layout import layout_default
from datamodules.synthetic.textures import ZOOM_BLOCK, make_bank, render
from datamodules.synthetic.tiger_layout import tiger_layout

GENERATOR_VERSION = "1"
SLIDE_MPP = 0.5
LAYOUTS = {"default": layout_default, "tiger": tiger_layout}


def slide_rngs(seed: int, index: int) -> tuple[np.random.Generator, ...]:
    """Independent streams (layout, textures, label noise) of slide `index`: changing the label
    noise never changes the pixels, and slide i is the same whatever `n_slides` is."""
    ss = np.random.SeedSequence(seed, spawn_key=(index,))
    return tuple(np.random.default_rng(s) for s in ss.spawn(3))


def render_slide(size: int, seed: int, index: int, layout: str = "default"):
    """(RGB level 0, layout) of one slide, without writing anything (used by tests and docs)."""
    r_layout, r_tex, _ = slide_rngs(seed, index)
    lay = LAYOUTS[layout](size, r_layout)
    bank = make_bank(r_tex)
    offset = tuple(int(v) * ZOOM_BLOCK for v in r_tex.integers(0, bank.shape[1] // ZOOM_BLOCK, 2))
    return render(lay.tex, bank, offset), lay
