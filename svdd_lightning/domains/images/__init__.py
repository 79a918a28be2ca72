"""Images: diffusers UNets and Stable Diffusion as SVDD models, image rewards, an MNIST classifier
(the ``images`` extra)."""
from ...extras import require

require("diffusers", "PIL", extra="images", feature="svdd_lightning.domains.images")
