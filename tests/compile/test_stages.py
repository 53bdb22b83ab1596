"""The stages of a step (nas.compile.backends.stages): the elementwise work one generated kernel does."""

from nas.cell import known_cell
from nas.compile.backends.stages import Stages
from nas.compile.plan import lower


def test_stages_of_known_cells():
    assert Stages(lower(known_cell("lstm"))).count == 1
    assert Stages(lower(known_cell("gru"))).count == 1
    # darts_v2's nodes by depth: s0 | s1 | s2 s3 s4 (read s1) | s5 s7 | s6 s8
    darts = Stages(lower(known_cell("darts_v2")))
    assert darts.count == 5 and [len(darts.nodes(s)) for s in range(5)] == [3, 3, 8, 6, 7]
    assert Stages(lower(known_cell("nas_cell"))).count == 1
