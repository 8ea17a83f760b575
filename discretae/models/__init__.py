"""Layer 4, the networks and how they learn: conv/MLP encoders and decoders, the registry
of model kinds, the autoencoder and its builder, augmentations, the two-view objectives,
the training loop and its checkpoints."""
