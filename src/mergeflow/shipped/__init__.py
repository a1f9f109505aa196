"""Artefacts shipped in the repository (the tiny θ_0 and fine-tuned encoders), installed when their recipes match."""
