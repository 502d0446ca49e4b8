"""rft-ds: SHAD token labels + RFT loss (arXiv 2412.14780) on DeepSpeed ZeRO-3."""

__version__ = "0.1.0"
