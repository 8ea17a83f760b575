"""Layer 5, the scikit-learn facade: ``DiscreteAutoencoder`` (fit) and the inference
half it shares with ``FittedModel`` (a model read from a file, without scikit-learn)."""
