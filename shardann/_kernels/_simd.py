"""LLVM IR helpers for the few kernels written as Numba intrinsics.

Numba compiles loops over arrays; where a loop needs values to stay in
vector registers across iterations (a running minimum over centroids) or an
instruction Numba cannot express (a byte shuffle), the kernel is an
``@intrinsic`` that emits LLVM IR with these helpers. Generic vector IR
compiles for any CPU; only :mod:`.fastscan` and :mod:`.fastscan8` use x86-specific
instructions.
"""

from llvmlite import ir
from numba.core import cgutils, types

I32 = ir.IntType(32)
I64 = ir.IntType(64)
F32 = ir.FloatType()


def vec(elem, width):
    return ir.VectorType(elem, width)


def data_pointer(context, builder, arr_type, arr):
    """Pointer to the first element of a Numba array value."""
    return context.make_array(arr_type)(context, builder, arr).data


def vector_at(builder, base, offset, vtype):
    """Pointer to a ``vtype`` vector at element ``offset`` (i64 value) of ``base``."""
    return builder.bitcast(builder.gep(base, [offset]), vtype.as_pointer())


def splat(builder, value, width):
    """A vector of ``width`` copies of the scalar ``value``."""
    vtype = vec(value.type, width)
    one = builder.insert_element(ir.Constant(vtype, ir.Undefined), value, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vtype, ir.Undefined),
                                  ir.Constant(vec(I32, width), [0] * width))


def declare(builder, name, ret, args):
    """An LLVM intrinsic (or external function) declared in this module."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def check_c_array(name, arr, dtype, ndim):
    """Typing-time check that an intrinsic's argument is a C-contiguous array."""
    if not (isinstance(arr, types.Array) and arr.ndim == ndim and arr.layout == "C"
            and arr.dtype == dtype):
        raise TypeError(f"{name} must be a C-contiguous {dtype} array with {ndim} dimensions")


def reduce_select(builder, v, pick):
    """The one float of ``v`` (a vector of a power-of-two width) that wins every
    ``fcmp pick`` ("<": the smallest, ">": the largest): a halving tree of
    compare-and-select (minps / maxps); LLVM's reduce.fmin intrinsic would
    expand to scalar NaN handling."""
    width = v.type.count
    while width > 1:
        width //= 2
        undef = ir.Constant(v.type, ir.Undefined)
        a = builder.shuffle_vector(v, undef, ir.Constant(vec(I32, width), list(range(width))))
        b = builder.shuffle_vector(
            v, undef, ir.Constant(vec(I32, width), list(range(width, 2 * width))))
        v = builder.select(builder.fcmp_ordered(pick, a, b), a, b)
    return builder.extract_element(v, ir.Constant(I32, 0))
