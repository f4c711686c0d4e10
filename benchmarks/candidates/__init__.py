"""Candidate methods for issue 14 (calibrated low-NFE sampling), each evaluated on the accuracy benchmark's problems,
batch and references before it may enter the library: a method enters only where it wins at NFE <= 10.

* ``afs`` -- AMED's analytical first step (Zhou et al., arXiv:2312.00094): ``python -m benchmarks.candidates.afs``,
  results in ``benchmarks/results/candidates_afs.md``.
"""
