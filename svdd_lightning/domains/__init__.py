"""Application domains: each supplies a pretrained model, rewards, value networks and configs."""
