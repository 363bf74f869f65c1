"""unlearn_fast: which training images made this generated image possible?

Attribution for text-to-image diffusion models by simulated unlearning (Wang et al., NeurIPS 2024), with fused kernels.
"""

__version__ = "0.1.0"
