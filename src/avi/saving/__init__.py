"""Saving a fit and loading it elsewhere, without pickle and without the training data.

``fit.save(path)`` writes a folder (:mod:`avi.saving.files`): ``fit.json`` describes the fit in
plain JSON (format version, avi and library versions, the model's sites with shapes, supports
and plates, the family with its factor, encoder and inputs, the input standardisation's size,
q of the globals, the training record and convergence certificate) and ``arrays.eqx`` holds
the arrays (variational parameters, encoder weights, input standardisation), written by
equinox. ``avi.load(path, model)`` rebuilds the family from the description, its parameters'
structure from the family, and reads the arrays into it: the loaded fit's posterior of new
data is the original's.
"""

from avi.saving.files import FORMAT_VERSION
from avi.saving.read import load
from avi.saving.write import save_fit

__all__ = ["FORMAT_VERSION", "load", "save_fit"]
