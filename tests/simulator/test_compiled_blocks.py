"""simulator.compiled: a batch whose steps do not fit the cache is cut into blocks of rows that
run through the whole program one after the other, on one thread (a plain loop; on more,
each thread runs one range of rows, in blocks on the portable kernels). The plan (:func:`simulator.compiled._chunking`) on the sizes of
the bench models, and the blocked programs' bits (outputs and per-step saturation counters)
against the step-by-step interpreter, with saturating rows in every block. Blocking only slices rows, whatever the kernels: the file passes with
SIMULATOR_KERNELS=portable as well."""
import numpy as np
import pytest

# one gemm with per-channel fp32 requantization: the cheapest program with a counted kernel
# (blocking does not look at kernels, only at buffer sizes)
from test_compiled import _assert_results_equal, _fc, _int8

import simulator.compiled as compiled_mod
from simulator.compiled import compile_program, last_reason
from simulator.run import run


@pytest.mark.parametrize("batch,threads,row_bytes,plan", [
    # ResNet-8 / KWS / MobileNetV2 at batch 256 (their largest step's bytes per row): blocks of
    # 8 rows on one thread; on two, one half per thread (blocks made two threads slower)
    (256, 1, 67649, (8, 32, 0)), (256, 2, 67649, (128, 2, 0)), (256, 1, 36097, (8, 32, 0)),
    (256, 1, 129089, (8, 32, 0)),
    # steps that fit (AD01: 1.5 KiB per row): whole on one thread, one half per thread on two
    (256, 1, 1537, None), (256, 2, 1537, (128, 2, 0)),
    # smaller rows: about a power of two of them per block (300 // 32 = 9 blocks); a shorter
    # last block
    (300, 1, 10000, (34, 8, 28)), (300, 2, 10000, (150, 2, 0)),
    # rows larger than a block: still about CHUNK_MIN_ROWS per block
    (100, 1, 1 << 20, (9, 11, 1)),
    # threads without blocks: CHUNK_MIN_ROWS rows per thread at least, as before
    (15, 2, 0, None), (19, 2, 0, (10, 1, 9)), (17, 3, 0, (9, 1, 8)),
])
def test_chunking_plan(batch, threads, row_bytes, plan):
    assert compiled_mod._chunking(batch, threads, row_bytes) == plan
    if plan is not None:
        rows, full, tail = plan
        assert full * rows + tail == batch and 0 <= tail < rows


@pytest.mark.parametrize("batch,threads,row_bytes,plan", [
    # on the portable kernels each thread's half runs in blocks (prange hands each thread 16)
    (256, 2, 67649, (8, 32, 0)), (256, 2, 129089, (8, 32, 0)),
    (256, 2, 1537, (128, 2, 0)),      # AD01's steps fit: one half per thread, as without
    (300, 2, 10000, (38, 7, 34)),     # 4 chunks per thread, the last one shorter
    (256, 1, 67649, (8, 32, 0)),      # one thread: as without the flag
])
def test_chunking_plan_with_blocks_on_threads(batch, threads, row_bytes, plan):
    assert compiled_mod._chunking(batch, threads, row_bytes, blocks_on_threads=True) == plan


def test_live_bytes_counts_the_largest_step():
    program = _fc()
    sizes = [compiled_mod._spec_pass(program, {"x": ((b, 24), np.dtype(np.int8))}, {})
             for b in (1, 8, 64)]
    # at least the step's input and output, and growing with the batch
    assert all(s >= b * (24 + 20) for s, b in zip(sizes, (1, 8, 64)))
    assert sizes[0] < sizes[1] < sizes[2]


def _check(program, compiled, batch):
    saturated = 0
    for seed in range(3):
        x = _int8(np.random.default_rng(seed), (batch, 24))
        x[seed::4] = 127 if seed % 2 else -128  # saturating rows in every block
        x[-1] = -128 if seed % 2 else 127
        feeds = {"x": x}
        want = run(program, feeds, threads=1, compile="no")
        _assert_results_equal(compiled.run(feeds), want)
        saturated += want.stats["fc"]["out_saturated"]
    assert saturated  # the counters were exercised


# one thread, five blocks of 8 rows (one chunk function: a shorter last block has its own, as
# test_compiled.py's split test checks under prange; two threads run the same functions under
# prange, not repeated here: a parallel program costs ~8 s to compile, the plan is checked above)
@pytest.mark.parametrize("threads,batch,blocks", [(1, 40, 5)])
def test_blocked_program_is_bit_exact(monkeypatch, threads, batch, blocks):
    import numba

    # every step "too large for the cache"
    monkeypatch.setattr(compiled_mod, "CACHE_BYTES", 0)
    monkeypatch.setattr(compiled_mod, "BLOCK_BYTES", 1)
    program = _fc()
    feeds = {"x": np.zeros((batch, 24), np.int8)}
    compiled = compile_program(program, feeds, threads=threads)
    assert compiled is not None, last_reason()
    assert compiled.chunks == blocks
    assert "def chunk0(" in compiled.source and "def chunk1(" not in compiled.source
    loop = "prange" if threads > 1 else "range"
    assert f"for c in {loop}({blocks}):" in compiled.source
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        _check(program, compiled, batch)
    finally:
        numba.set_num_threads(previous)


def test_small_batches_stay_whole(monkeypatch):
    """Below the cache budget one thread runs the batch as one function, as before."""
    program = _fc()
    compiled = compile_program(program, {"x": np.zeros((40, 24), np.int8)}, threads=1)
    assert compiled is not None, last_reason()
    assert compiled.chunks == 1 and "chunk0" not in compiled.source
