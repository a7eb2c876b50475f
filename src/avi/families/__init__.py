from avi.families.encoders import MLP, EncoderSpec, Polynomial
from avi.families.families import (
    Amortized,
    Constant,
    Factorized,
    Family,
    LocalData,
    Window,
    as_family,
    count_parameters,
)
