"""The model layer: trace a NumPyro model once; its layout; a pure log joint density.

The model is run a single time on the user's arguments to find the *data plate* (the plate that
holds the local latent and observed sites, overridable by name), the *global latents* theta
(latent sites outside it), the *local latents* z_n (latent sites inside it) with their per-datum
shapes, the observed sites and the *per-datum arguments* (arrays whose leading axis has the data
plate's size).
"""

from avi.model.arguments import describe_argument, is_per_datum, validate_arguments
from avi.model.layout import (
    Model,
    ModelLayout,
    SiteLayout,
    TracedModel,
    unflatten_globals,
    unflatten_locals,
)
from avi.model.log_joint import constrained_trace, log_joint, log_joint_by_plate, log_joint_parts
from avi.model.trace import is_latent, plate_axis, plate_names, run_trace, trace_model

__all__ = [
    "Model",
    "ModelLayout",
    "SiteLayout",
    "TracedModel",
    "constrained_trace",
    "describe_argument",
    "is_latent",
    "is_per_datum",
    "log_joint",
    "log_joint_by_plate",
    "log_joint_parts",
    "plate_axis",
    "plate_names",
    "run_trace",
    "trace_model",
    "unflatten_globals",
    "unflatten_locals",
    "validate_arguments",
]
