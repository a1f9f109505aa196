"""The `mergeflow` verbs: each module registers its own on the parser; `main` assembles them and runs one."""
