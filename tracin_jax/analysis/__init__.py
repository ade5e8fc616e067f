"""Analyses of the paper: cancellation ratio and gradient similarity (sec. 3),
mislabel clustering by influence distance (appendix A), figures."""
from tracin_jax.analysis.cancellation import (CancellationReport, View, analyze_checkpoints,
                                              cancellation_ratio, gradient_statistics,
                                              mean_pairwise_cosine, parameter_change,
                                              parameter_views)

__all__ = ["CancellationReport", "View", "analyze_checkpoints", "cancellation_ratio",
           "gradient_statistics", "mean_pairwise_cosine", "parameter_change", "parameter_views"]
