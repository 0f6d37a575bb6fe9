"""Covariate shift: trained runs measured on corrupted test sets with test-time methods (source, norm, α-BN,
TENT, and a reconstruction of the α-BN paper's Core loss), each a wrapper around a copy of the trained model.

This layer sits after the sweep (it reads trained runs and writes measurements to the store) and before
analysis: TENT's online BN-affine steps live here, not under `analysis/` (which never trains).
"""

from depthlab.shift.bn import MixedBatchNorm, with_mixed_bn
from depthlab.shift.methods import METHODS, Method, TestTimeModel, class_correlation_loss, softmax_entropy

__all__ = ["METHODS", "Method", "MixedBatchNorm", "TestTimeModel", "class_correlation_loss", "softmax_entropy",
           "with_mixed_bn"]
