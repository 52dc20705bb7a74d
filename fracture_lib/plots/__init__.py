"""Every figure the notebooks show, one submodule per stage.

- ``plots.exploration``: dataset composition, image sizes, intensities, sample grids (01)
- ``plots.preprocessing``: raw/CLAHE/resized examples, augmentation examples (02)
- ``plots.training``: learning curves (03)
- ``plots.evaluation``: ROC/PR, confusion matrices, reliability, histograms, Grad-CAM galleries (04, 05)

Each function takes data (arrays or data frames) and returns a ``matplotlib.figure.Figure``
with a title, labelled axes and units; it never reads files or trains models.
"""
