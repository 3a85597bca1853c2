"""Crossbar operators against a brute-force loop over the explicit conductance list."""
import numpy as np
import pytest

from epsim.models.connections import Conv2d, Dense


def brute_force(conn, w, v_in, v_out):
    t, i, j = conn.pairs()
    g = w.reshape(-1)[t]
    drive_out = np.zeros_like(v_out)
    drive_in = np.zeros_like(v_in)
    sq = np.zeros(w.size)
    for b in range(v_in.shape[0]):
        np.add.at(drive_out[b], j, g * v_in[b, i])
        np.add.at(drive_in[b], i, g * v_out[b, j])
        np.add.at(sq, t, (v_in[b, i] - v_out[b, j]) ** 2)
    deg_out = np.zeros(v_out.shape[1])
    deg_in = np.zeros(v_in.shape[1])
    np.add.at(deg_out, j, g)
    np.add.at(deg_in, i, g)
    return drive_out, drive_in, sq.reshape(w.shape), deg_out, deg_in


CONNS = [Dense((2, 3, 3), (7,)), Conv2d((2, 6, 5), 3, 3, 1), Conv2d((4, 7, 7), 2, 2, 2), Conv2d((1, 8, 8), 3, 3, 2)]


@pytest.mark.parametrize("conn", CONNS, ids=lambda c: f"{c.kind}{c.param_shape}")
def test_operators_match_explicit_conductance_list(conn):
    rng = np.random.default_rng(0)
    w = rng.uniform(0, 1, conn.param_shape)
    v_in = rng.normal(size=(3, conn.n_in))
    v_out = rng.normal(size=(3, conn.n_out))
    d_out, d_in, sq, deg_out, deg_in = brute_force(conn, w, v_in, v_out)
    np.testing.assert_allclose(conn.drive_out(w, v_in), d_out, atol=1e-12)
    np.testing.assert_allclose(conn.drive_in(w, v_out), d_in, atol=1e-12)
    np.testing.assert_allclose(conn.sq_drop_sum(v_in, v_out), sq, atol=1e-10)
    np.testing.assert_allclose(conn.degree_out(w), deg_out, atol=1e-12)
    np.testing.assert_allclose(conn.degree_in(w), deg_in, atol=1e-12)


@pytest.mark.parametrize("conn", CONNS, ids=lambda c: f"{c.kind}{c.param_shape}")
@pytest.mark.parametrize("shared_input", [False, True])
def test_sq_drop_diff_equals_difference_of_sums(conn, shared_input):
    rng = np.random.default_rng(1)
    in_p = rng.normal(size=(4, conn.n_in))
    in_m = in_p if shared_input else rng.normal(size=(4, conn.n_in))
    out_p, out_m = rng.normal(size=(2, 4, conn.n_out))
    expected = conn.sq_drop_sum(in_p, out_p) - conn.sq_drop_sum(in_m, out_m)
    np.testing.assert_allclose(conn.sq_drop_diff(in_p, out_p, in_m, out_m), expected, atol=1e-10)


@pytest.mark.parametrize("conn", CONNS, ids=lambda c: f"{c.kind}{c.param_shape}")
def test_drop_product_keeps_the_precision_of_a_tiny_response(conn):
    """The factored drop difference is linear in the phases' difference, with no floor at
    the voltages' rounding: a response 1e-20 of the voltages gives 1e-20 of the result of a
    unit one (the difference of the two squared sums would give rounding noise or 0)."""
    rng = np.random.default_rng(2)
    v_in, v_out = rng.normal(size=(3, conn.n_in)), rng.normal(size=(3, conn.n_out))
    d_in, d_out = rng.normal(size=(3, conn.n_in)), rng.normal(size=(3, conn.n_out))
    unit = conn.drop_product_sum(d_in, d_out, 2 * v_in, 2 * v_out)
    tiny = conn.drop_product_sum(1e-20 * d_in, 1e-20 * d_out, 2 * v_in, 2 * v_out)
    np.testing.assert_allclose(tiny, 1e-20 * unit, rtol=1e-12, atol=0)
    assert np.abs(unit).min() > 0
    lost = conn.sq_drop_sum(v_in + 1e-20 * d_in, v_out + 1e-20 * d_out) - conn.sq_drop_sum(v_in, v_out)
    assert not np.allclose(lost, 1e-20 * unit, rtol=1e-3, atol=0)


@pytest.mark.parametrize("shared_input", [True, False])
def test_low_rank_drop_difference_equals_the_dense_one(shared_input):
    """The factored EP drop difference of a dense crossbar equals Dense.sq_drop_diff, its RMS
    from the factors equals the dense RMS, and its SGD step (momentum, clipping) equals the
    dense step."""
    from epsim.learning.low_rank import dense_drop_diff

    rng = np.random.default_rng(0)
    d = Dense((30,), (20,))
    in_p = rng.normal(size=(4, 30))
    in_m = in_p if shared_input else rng.normal(size=(4, 30))
    out_p, out_m = rng.normal(size=(4, 20)), rng.normal(size=(4, 20))
    diff_in = None if shared_input else in_p - in_m
    g = dense_drop_diff(diff_in, out_p - out_m, in_p + in_m, out_p + out_m).scaled(0.3)
    dense = 0.3 * d.sq_drop_diff(in_p, out_p, in_m, out_m)
    np.testing.assert_allclose(g.dense(), dense, rtol=0, atol=1e-12)
    assert g.rms() == pytest.approx(np.sqrt(np.mean(dense ** 2)), rel=1e-12)
    w, m = rng.uniform(0, 1, (30, 20)), rng.normal(size=(30, 20))
    w_ref, m_ref = w.copy(), 0.9 * m + dense
    g.sgd_step(w, 0.1, 0.0, 0.9, momentum=0.9, m=m)
    np.testing.assert_allclose(m, m_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(w, np.clip(w_ref - 0.1 * m_ref, 0.0, 0.9), rtol=0, atol=1e-12)
    assert g.rms() == pytest.approx(np.sqrt(np.mean(dense ** 2)), rel=1e-12)  # from the update's sums
