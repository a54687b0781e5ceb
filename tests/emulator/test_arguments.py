"""Kernel arguments are checked against the C++ parameter types (derived in C++, not parsed)."""

import numpy as np
import pytest

import cuda_emu


@pytest.fixture(scope="module")
def fn(kernels):
    # void fmul_kernel(const float* a, const float* b, float* c, int n)
    return kernels.get_function("fmul_kernel")


def _args(n=np.int32(1), a=None):
    x = np.ones(1, np.float32)
    return (x if a is None else a, x, np.zeros(1, np.float32), n)


def test_param_types_reported(fn):
    assert fn.param_types == ["const float*", "const float*", "float*", "int"]


@pytest.mark.parametrize("bad,what", [
    (1, "Python int"), (1.0, "Python float"), (np.int64(1), "int64"), (np.uint64(1), "uint64"),
    (np.float32(1), "float32"), (np.int16(1), "int16"), (np.zeros(1, np.int32), "numpy array"),
])
def test_scalar_mismatch_raises_type_error(fn, bad, what):
    with pytest.raises(TypeError, match=rf"argument 3: kernel parameter type is 'int' but got .*{what}"):
        fn(1, 1, _args(n=bad))


def test_signedness_only_matters_when_value_does_not_fit(fn):
    fn(1, 1, _args(n=np.uint32(1)))          # fits into int: accepted
    with pytest.raises(TypeError, match="does not fit"):
        fn(1, 1, _args(n=np.uint32(3_000_000_000)))


def test_pointer_parameter_needs_array(fn):
    with pytest.raises(TypeError, match="argument 0: kernel parameter type is 'const float\\*'.*pointer"):
        fn(1, 1, _args(a=np.float32(1)))


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.uint8, np.float16])
def test_pointer_element_type_checked(fn, dtype):
    with pytest.raises(TypeError, match="argument 0"):
        fn(1, 1, _args(a=np.ones(4, dtype)))


def test_argument_count_checked(fn):
    with pytest.raises(TypeError, match="takes 4 arguments"):
        fn(1, 1, _args()[:3])


def test_non_contiguous_array_rejected(fn):
    a = np.ones(8, np.float32)[::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        fn(1, 1, _args(a=a))


def test_misaligned_array_rejected_for_vector_pointer(kernels):
    raw = np.zeros(4 * 9, np.uint32)
    fn = kernels.get_function("vec_copy")  # const uint4*
    fn(1, 8, (raw[:32], raw[:32].copy(), np.int32(8)))
    with pytest.raises(ValueError, match="16-byte aligned"):
        fn(1, 8, (raw[1:33], raw[:32].copy(), np.int32(8)))


def test_raw_16bit_floats_accepted_for_unsigned_short_pointer():
    code = 'extern "C" __global__ void k(const unsigned short* x, unsigned short* y) { y[threadIdx.x] = x[threadIdx.x] ^ 0x8000; }'
    fn = cuda_emu.Module(code).get_function("k")
    x = np.array([1.0, -2.0, 0.5], np.float16)
    y = np.zeros(3, np.float16)
    fn(1, 3, (x, y))
    np.testing.assert_array_equal(y, -x)


def test_void_and_byte_pointers_accept_any_array():
    code = 'extern "C" __global__ void k(const void* x, unsigned char* y, int n) { if (threadIdx.x < n) y[threadIdx.x] = ((const unsigned char*)x)[threadIdx.x]; }'
    fn = cuda_emu.Module(code).get_function("k")
    x = np.array([0x04030201], np.uint32)
    y = np.zeros(4, np.int8)
    fn(1, 4, (x, y, np.int32(4)))
    np.testing.assert_array_equal(y, [1, 2, 3, 4])


def test_struct_by_value_parameter():
    code = r'''
    struct P { int a; float b; };
    extern "C" __global__ void k(P p, float* o) { o[0] = p.a + p.b; }'''
    fn = cuda_emu.Module(code).get_function("k")
    dt = np.dtype([("a", np.int32), ("b", np.float32)])
    o = np.zeros(1, np.float32)
    fn(1, 1, (np.array((3, 0.5), dt)[()], o))
    assert o[0] == 3.5
    with pytest.raises(TypeError, match="struct"):
        fn(1, 1, (np.int64(3), o))


def test_in_place_aliasing_arrays(kernels):
    # the same array as input and output (in place): the kernel sees one buffer
    x = np.arange(64, dtype=np.float32)
    kernels.get_function("fmul_kernel")(2, 32, (x, x, x, np.int32(64)))
    np.testing.assert_array_equal(x, np.arange(64, dtype=np.float32) ** 2)
