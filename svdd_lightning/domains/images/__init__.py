"""Images: diffusers UNets and Stable Diffusion as SVDD models, image rewards, an MNIST classifier."""
