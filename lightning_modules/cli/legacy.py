"""Class paths from before the package re-layout (v0.1), so old checkpoints and configs load.

The one place that knows the old flat module names: `current` maps any dotted path written by
an earlier version to where the thing lives now. Methods and DataModules kept their paths.
"""

from __future__ import annotations

#: old module -> new module (the re-layout of issue 11).
MOVED_MODULES = {
    "datamodules.slides": "datamodules.slides.slide",
    "datamodules.tilecache": "datamodules.slides.tilecache",
    "datamodules.tiff_checks": "datamodules.slides.tiff_checks",
    "datamodules.classmaps": "datamodules.labels.classmaps",
    "datamodules.annotation_formats": "datamodules.labels.formats",
    "datamodules.annotations": "datamodules.labels.sources",
    "datamodules.samplers": "datamodules.sampling.grid",
    "datamodules.tissue": "datamodules.sampling.tissue",
    "datamodules.balancing": "datamodules.sampling.balancing",
    "datamodules.train_order": "datamodules.sampling.train_order",
    "datamodules.eval_sampler": "datamodules.sampling.eval_sampler",
    "datamodules.views_dual": "datamodules.views.dual",
    "datamodules.views_zoom": "datamodules.views.zoom",
    "datamodules.synthetic_io": "datamodules.synthetic.files",
    "datamodules.synthetic_layout": "datamodules.synthetic.layout",
    "datamodules.synthetic_textures": "datamodules.synthetic.textures",
    "datamodules.synthetic_tiger": "datamodules.synthetic.tiger",
    "datamodules.mask_writer": "lightning_modules.outputs.mask_writer",
    "datamodules.confusion_stream": "lightning_modules.outputs.evaluation",
    "lightning_modules.inference": "datamodules.wholeslide",
    "lightning_modules.overlays": "lightning_modules.outputs.overlays",
    "lightning_modules.slide_outputs": "lightning_modules.outputs.slide_files",
    "lightning_modules.slide_writer": "lightning_modules.callbacks.slide_writer",
    "lightning_modules.divergence": "lightning_modules.callbacks.divergence",
    "lightning_modules.weights": "lightning_modules.nets.weights",
    "lightning_modules.checkpoints": "lightning_modules.cli.checkpoints",
    "lightning_modules.lightning_cli": "lightning_modules.cli.lightning_cli",
    "lightning_modules.config_errors": "lightning_modules.cli.config_errors",
    "lightning_modules.report": "lightning_modules.cli.report",
    "lightning_modules.loggers": "lightning_modules.cli.loggers",
    "lightning_modules.resume": "lightning_modules.cli.resume",
}
#: old class path -> new, where an old module became a package and its classes split up.
MOVED_CLASSES = {
    "datamodules.views.View": "datamodules.views.base.View",
    "datamodules.views.SingleView": "datamodules.views.single.SingleView",
    "datamodules.views.MultiMagView": "datamodules.views.multimag.MultiMagView",
    "datamodules.synthetic.ensure_dataset": "datamodules.synthetic.generator.ensure_dataset",
}


def current(class_path: str) -> str:
    """Where `class_path` (``module.Name``) lives now; unchanged if it never moved."""
    if class_path in MOVED_CLASSES:
        return MOVED_CLASSES[class_path]
    module, _, name = class_path.rpartition(".")
    return f"{MOVED_MODULES[module]}.{name}" if module in MOVED_MODULES else class_path
