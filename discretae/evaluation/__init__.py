"""Layer 4, judging codes: clustering and reconstruction metrics, figures, the JSON
report and the label-free discriminator score."""
