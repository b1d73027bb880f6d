"""dsbs: distilling step-by-step — train small task models on a large model's rationales."""

__version__ = "0.1.0"
