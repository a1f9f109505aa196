"""Training: contrastive pre-training of the tiny CLIP (θ_0) and fine-tuning of image encoders (θ_t)."""
