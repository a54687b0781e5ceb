"""Run by tests/test_sanitizers.py in a subprocess, against a build of the C extension with
AddressSanitizer and UBSan: the whole conformance kit over the cpu backend."""

from pruneplug.testing import parametrize_backend_checks, run_check


# NumPy data only: the sanitizers check the C code, which PyTorch tensors reach as the same arrays
@parametrize_backend_checks("cpu", large_size=100_003, array_types=("native",))
def test_cpu_conformance_under_sanitizers(backend_check):
    run_check(backend_check)
