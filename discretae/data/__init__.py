"""Layer 4, reading images: one reader per input format (image folders, .npy, IDX,
scikit-learn digits) behind one ``load_dataset``, and the datasets that stream batches."""
