"""galpipe: interpretable deep-learning stellar masses for survey catalogues.

Reimplements, at survey scale, the method of Zhang, Lin, Ting et al. (A&A 2025,
arXiv:2509.23901): networks that estimate stellar mass from images and photometry, interpreted
by local causal tests in a contrastive latent space and a pointwise mutual-information
decomposition.
"""

__version__ = "0.1.0"
