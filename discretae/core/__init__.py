"""Layer 2, shared helpers: errors, atomic files and output checks, tagged safetensors
files, argument checks, threads and the distributed (DDP) helpers. Imports nothing above it."""
