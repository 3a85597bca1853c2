"""The tied-conv drive kernels against plain reference loops.

``_conv_forward`` / ``_conv_transpose`` (and their ``_padded`` forms, which the numba solver
calls) work on whole windows (C_in, k, k) as contiguous vectors and skip nodes at exactly
0 V; the references are the straightforward loops over every kernel position (in the
benchmark that times the two). The
kernels sum the same terms in another order (the forward dot products in SIMD lanes), so the
results differ by rounding: the tests allow 1e-12 of the output's largest magnitude (measured:
about 1e-15).
"""
from __future__ import annotations


import numpy as np
import pytest

from epsim.models.connections import (Conv2d, _conv_forward, _conv_forward_padded, _conv_transpose,
                                      _conv_transpose_padded)
from scripts import load_script

RTOL = 1e-12


# the plain loops over every kernel position, which benchmarks/bench_conv_kernels.py times
bench = load_script("benchmarks/bench_conv_kernels.py")
reference_forward, reference_transpose = bench.reference_forward, bench.reference_transpose


def _sparse_normal(rng, shape, zero_fraction):
    """Normal voltages (V) with about ``zero_fraction`` of them at exactly 0 V."""
    v = rng.normal(size=shape)
    v[rng.random(shape) < zero_fraction] = 0.0
    return v


def _close(got, ref):
    scale = max(np.max(np.abs(ref)), 1e-300)
    return np.max(np.abs(got - ref)) <= RTOL * scale


CASES = [  # (c_in, h, w, c_out, k, stride, padding, batch)
    (1, 7, 7, 3, 3, 1, 0, 1), (3, 9, 8, 5, 3, 2, 0, 4), (2, 10, 11, 4, 3, 3, 0, 7),
    (4, 8, 8, 6, 3, 1, 1, 4), (5, 9, 7, 3, 3, 2, 1, 7), (3, 11, 10, 2, 3, 3, 1, 1),
    (2, 6, 6, 4, 2, 2, 1, 4), (3, 7, 9, 5, 4, 3, 0, 4), (6, 5, 5, 7, 5, 1, 2, 1),
    (16, 26, 26, 32, 3, 2, 0, 4), (32, 12, 12, 64, 3, 2, 0, 4), (64, 5, 5, 64, 3, 2, 0, 4),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("zero_fraction", [0.0, 0.6, 1.0])
def test_kernels_match_reference_loops(case, zero_fraction):
    ci, h, wd, co, k, s, p, batch = case
    conn = Conv2d((ci, h, wd), co, k, s, padding=p)
    rng = np.random.default_rng(hash((case, zero_fraction)) % 2**32)
    w = rng.uniform(0.0, 2.0, conn.param_shape)
    v_in = _sparse_normal(rng, (batch,) + conn.in_shape, zero_fraction)
    v_out = _sparse_normal(rng, (batch,) + conn.out_shape, zero_fraction)
    padded = np.zeros((batch,) + conn.padded_shape)
    padded[:, :, p:p + h, p:p + wd] = v_in

    ref_fwd = np.zeros((batch,) + conn.out_shape)
    reference_forward(w, padded, s, ref_fwd)
    ref_full = np.zeros((batch,) + conn.padded_shape)
    reference_transpose(w, v_out, s, ref_full)
    ref_back = ref_full[:, :, p:p + h, p:p + wd]

    fwd = np.full((batch,) + conn.out_shape, np.nan)  # every output is written
    _conv_forward_padded(w, v_in, s, p, fwd)
    assert _close(fwd, ref_fwd)
    back = np.zeros((batch,) + conn.in_shape)
    _conv_transpose_padded(w, v_out, s, p, back)
    assert _close(back, ref_back)
    if p == 0:
        fwd0 = np.full_like(fwd, np.nan)
        _conv_forward(w, v_in, s, fwd0)
        back0 = np.zeros_like(back)
        _conv_transpose(w, v_out, s, back0)
        assert _close(fwd0, ref_fwd) and _close(back0, ref_back)
    # the connection's maps go through the same kernels
    assert _close(conn.drive_out(w, v_in.reshape(batch, -1)), ref_fwd.reshape(batch, -1))
    assert _close(conn.drive_in(w, v_out.reshape(batch, -1)), ref_back.reshape(batch, -1))


def test_transpose_adds_to_the_given_currents():
    """``_conv_transpose`` accumulates into ``out``, as the scatter loop does."""
    rng = np.random.default_rng(1)
    w = rng.uniform(0.0, 1.0, (4, 3, 3, 3))
    v_out = _sparse_normal(rng, (2, 4, 4, 4), 0.5)
    start = rng.normal(size=(2, 3, 9, 9))
    ref = start.copy()
    reference_transpose(w, v_out, 2, ref)
    got = start.copy()
    _conv_transpose(w, v_out, 2, got)
    assert _close(got, ref)


def test_kernels_take_strided_weight_views():
    """Non-contiguous conductance arrays (a transposed view) give the same drives."""
    rng = np.random.default_rng(2)
    w = np.ascontiguousarray(rng.uniform(0.0, 1.0, (3, 5, 3, 3)).transpose(1, 0, 2, 3))
    w_view = w.transpose(1, 0, 2, 3).copy().transpose(1, 0, 2, 3)  # same values, strided
    v_in = _sparse_normal(rng, (3, 3, 8, 8), 0.3)
    a, b = np.zeros((3, 5, 6, 6)), np.zeros((3, 5, 6, 6))
    _conv_forward(w, v_in, 1, a)
    _conv_forward(w_view, v_in, 1, b)
    assert np.array_equal(a, b)
