"""Layer 4, reading images: one reader per input format (image folders, .npy, IDX,
scikit-learn digits) behind one ``load_dataset``, and the datasets that stream batches.

- ``readers``: files to arrays (image files through Pillow, .npy, IDX, labels);
- ``datasets``: ``ImageDataset`` and its array and folder kinds, ``load_dataset``.
"""

from discretae.data.datasets import (
    ArrayDataset,
    FolderDataset,
    ImageDataset,
    auto_workers,
    load_dataset,
)

__all__ = ["ArrayDataset", "FolderDataset", "ImageDataset", "auto_workers", "load_dataset"]
