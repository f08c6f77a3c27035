"""FAISS on one thread in index tests: their data is tiny, and on a busy machine OpenMP threads
spin waiting for each other (measured 7x the wall time of one thread for the baseline machine)."""

import faiss
import pytest


@pytest.fixture(autouse=True)
def one_faiss_thread():
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)
