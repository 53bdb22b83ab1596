"""The C code's buffer pool (nas.compile.backends.c.pool): blocks reused only when idle, bounded,
thread-safe, and a training loop that stops allocating."""

import pytest
import torch

from nas.cell import known_cell
from nas.compile import CellRNN
from nas.compile.backends.c import codegen
from nas.compile.backends.c.pool import POOL, Pool


def test_pool_reuses_idle_blocks_and_never_one_in_use():
    pool = Pool(minimum=0)
    like = torch.empty(0)
    a = pool.take(like, (4, 8))
    a.fill_(1.0)
    b = pool.take(like, (4, 8))  # a is in use: another block
    assert a.data_ptr() != b.data_ptr()
    view = a[1:]
    del a
    c = pool.take(like, (4, 8))  # a's block is still referenced by a view
    assert c.data_ptr() not in (view.data_ptr() - 32, b.data_ptr()) and bool((view == 1).all())
    kept = view.data_ptr() - 32
    del view
    assert pool.take(like, (4, 8)).data_ptr() == kept  # now idle: reused
    assert pool.take(like, (2, 3)).shape == (2, 3)


def test_pool_lets_unused_blocks_go():
    pool = Pool(minimum=0)
    like = torch.empty(0)
    burst = [pool.take(like, (16,)) for _ in range(10)]  # e.g. outputs kept in a list
    del burst
    for _ in range(200):
        pool.take(like, (8,))
    assert [e[0] for e in pool.blocks] == [32]  # before allocating, the idle burst went


def test_pool_stays_bounded_when_sizes_vary():
    pool = Pool(minimum=0)
    like = torch.empty(0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):  # a training loop over sequences of random length: 3 buffers a step
        step = [pool.take(like, (int(torch.randint(20, 200, (), generator=gen)), 64)) for _ in range(3)]
        del step
    assert sum(e[0] for e in pool.blocks) <= 2 * 3 * 200 * 64 * 4 * 1.125


def test_pool_never_reuses_a_block_held_by_its_storage_or_shared():
    pool = Pool(minimum=0)
    like = torch.empty(0)
    a = pool.take(like, (8,))
    storage = a.untyped_storage()  # the caller keeps only the storage
    ptr = a.data_ptr()
    del a
    assert pool.take(like, (8,)).data_ptr() != ptr
    b = pool.take(like, (8,))
    b.share_memory_()  # (what sending it through torch.multiprocessing does)
    ptr_b = b.data_ptr()
    del b
    assert all(pool.take(like, (8,)).data_ptr() != ptr_b for _ in range(3))
    del storage


def test_pool_is_thread_safe():
    import threading

    pool = Pool(minimum=0)
    like = torch.empty(0)
    wrong = []

    def work(k):
        for i in range(2000):
            t = pool.take(like, (64,))
            t.fill_(k * 10000 + i)
            if not bool((t == k * 10000 + i).all()):
                wrong.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


@pytest.mark.skipif(codegen.compiler() is None, reason="no C compiler")
def test_training_steps_reuse_the_pooled_buffers():
    POOL.clear()
    rnn = CellRNN(known_cell("darts_v2"), 128, 128)
    x = torch.randn(64, 64, 128)  # buffers of 64 x 64 x 128 floats and more: pooled (>= 1 MiB)
    for step in range(6):
        out, _ = rnn(x)
        out.sum().backward()
        if step == 2:
            blocks = [id(e) for e in POOL.blocks]
    assert blocks and [id(e) for e in POOL.blocks] == blocks  # none new, none gone
    with torch.no_grad():
        kept = [rnn(x)[0] for _ in range(3)]  # outputs held by the caller across calls
        want = rnn(x)[0]
    for o in kept:
        assert torch.equal(o, want)
