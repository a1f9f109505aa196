"""One function per merge method, all with the signature `(TensorContext) -> TensorDirection`.

A method sees one floating-point tensor of every model and says how to merge it as
`origin + lam * delta`; the engine feeds it tensor by tensor, from memory or from files.
"""

from mergeflow.merging.methods.averaging import magmax, task_arithmetic, weight_averaging, zeroshot
from mergeflow.merging.methods.consensus import consensus
from mergeflow.merging.methods.dare import dare
from mergeflow.merging.methods.lowrank import cart, lowrank_ta
from mergeflow.merging.methods.singular import iso_c, iso_cts, tsv_m
from mergeflow.merging.methods.ties import ties

__all__ = [
    "cart",
    "consensus",
    "dare",
    "iso_c",
    "iso_cts",
    "lowrank_ta",
    "magmax",
    "task_arithmetic",
    "ties",
    "tsv_m",
    "weight_averaging",
    "zeroshot",
]
