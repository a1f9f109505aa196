"""The CLIP models: open_clip construction and model directories, zero-shot heads, and downloading θ_0."""
