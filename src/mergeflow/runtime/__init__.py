"""Where and how a job computes: device choice, threads, seeding, and the GPU lease of a local run."""
