"""Layer 4, reading images: one reader per input format (image folders, .npy, IDX,
scikit-learn digits) behind one ``load_dataset``, and the datasets that stream batches.

- ``readers``: files to arrays (image files through Pillow, .npy, IDX, labels);
- ``datasets``: ``ImageDataset`` and its array and folder kinds;
- ``loading``: ``load_dataset``, which picks the reader and the kind for a path or name.
"""

from discretae.data.datasets import ArrayDataset, FolderDataset, ImageDataset, auto_workers
from discretae.data.loading import load_dataset

__all__ = ["ArrayDataset", "FolderDataset", "ImageDataset", "auto_workers", "load_dataset"]
