"""The Django project. Importing it first caps the native math libraries' thread pools.

numpy's OpenBLAS and OpenMP start a thread per core for each matrix product and spin while
they wait: Whisper's feature extraction (a small mel-filter product per decode) cost twice the
CPU it needed, 105 ms instead of 54 ms a decode on this 2-core machine, and more with live
calls competing. Each of Parley's threads does small products; they scale across processes
(`make run WORKERS=N`), not threads. Set before numpy loads (this package is imported before
the settings, the ASGI app and every management command); an explicit setting wins.
"""

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
