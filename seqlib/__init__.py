"""seqlib: the companion package of *Sequence Modeling: from feed-forward networks to Mamba2*.

Every chapter of the book imports it. The models are written from scratch in PyTorch; the hot
operations (attention, the selective scan, the SSD scan) get fused Triton kernels for CUDA GPUs
beside their readable references.

Dimension letters, the same in the book, the docstrings and the code:

====  ==========================================================
b     batch
l     sequence length
h     heads
d     head dimension (attention) or channels (Mamba1)
n     state size
p     SSD head dimension
g     groups
c     chunks
v     vocabulary size
====  ==========================================================

Uppercase A, B, C, D and ``delta`` / ``dt`` are always a state space model's parameters.

Submodules: ``data``, ``tokenize``, ``models``, ``train``, ``decoding``, ``plotting``,
``utils``, ``analysis`` (gradient flow through recurrent models), ``grading``.
Never ``pip install seqlib``: that name on PyPI is another project; this package installs
from the book's repository (``pip install -e .``).
"""

__version__ = "0.1.0"
