"""The process shell: the `mergeflow` console entry and the warm job server it forwards jobs to."""
