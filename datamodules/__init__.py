"""Data side of wsiseg: slides, annotations, tissue, synthetic slides, views, datasets.

The DataModule and views are imported lazily so light commands (`wsiseg info`) start fast.
"""

_LAZY = {
    "WSIDataModule": ".wsi",
    "MultiMagView": ".views",
    "SingleView": ".views",
    "View": ".views",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
