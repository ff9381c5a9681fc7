"""Token-embedding geometry: power law of token frequencies, norm vs frequency, word groups, Gromov δ.

The maths modules (`hyperbolicity`, `frequency`, `norms`) work on plain arrays; `embeddings` reads
vectors from a model; `delta_protocols` and `pipeline` put them together for a model and datasets;
`plots` and `report` write the figures, JSON and markdown (`hyplora analyze`).
"""

from hyplora.geometry.frequency import PowerLawFit, count_tokens, fit_power_law
from hyplora.geometry.hyperbolicity import Hyperbolicity, delta_hyperbolicity, sampled_delta_hyperbolicity
from hyplora.geometry.norms import DEFAULT_GROUPS, spearman_with_ci

__all__ = [
    "DEFAULT_GROUPS",
    "Hyperbolicity",
    "PowerLawFit",
    "count_tokens",
    "delta_hyperbolicity",
    "fit_power_law",
    "sampled_delta_hyperbolicity",
    "spearman_with_ci",
]
