import numpy as np

from freshrec.state.arrays import grown


def test_grown_keeps_rows_doubles_capacity_and_fills_new_rows():
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert grown(a, 3) is a  # room enough: the same array
    b = grown(a, 4, fill=-1.0, minimum=4)
    assert b.shape == (6, 2) and b.dtype == a.dtype
    np.testing.assert_array_equal(b[:3], a)
    assert (b[3:] == -1.0).all()
    assert grown(np.zeros(0), 1).shape == (16,)  # the minimum capacity
    assert grown(a, 40).shape[0] == 40  # past double: exactly what is needed
