"""Shared timing for the Python benchmarks: CUDA events around each launch, an L2
flush before each timed launch, warm-up, median; plus the copy-bandwidth ceiling."""
import statistics
import time

import torch


class Timer:
    def __init__(self, device="cuda", clean_flush=False):
        """clean_flush: evict L2 by reading 4x its size instead of writing it. A write
        leaves L2 full of dirty lines whose write-back (~17 us for 50 MB at 3 TB/s)
        competes with the timed call and costs a short kernel proportionally more; a
        decode step's L2 holds mostly clean lines (weights, the last layer's reads)."""
        l2 = torch.cuda.get_device_properties(device).L2_cache_size
        self.flush = torch.empty(max(l2, 1 << 20) * 4, dtype=torch.uint8, device=device)
        self.flush.fill_(1)
        self.clean_flush = clean_flush
        # ~0.3 s of real GPU work before the first measurement: right after start-up the
        # second configuration of a run often lost one method's median to a transient
        # (clocks or lazy initialisation), e.g. 14 us -> 39-66 us at B=1.
        x = torch.randn(2048, 2048, device=device)
        t_end = time.time() + 0.3
        while time.time() < t_end:
            for _ in range(10):
                x = torch.tanh(x @ x)
            torch.cuda.synchronize()

    def evict_l2(self, i=0):
        if self.clean_flush:
            self.flush.view(torch.int32).amax()  # reads every byte, writes one scalar
        else:
            self.flush.fill_(i & 0xFF)

    def median_ms(self, fn, warmup=3, iters=20):
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for i in range(iters):
            self.evict_l2(i)
            # The GPU spins (~0.5 ms, no memory traffic) while this thread enqueues fn, so
            # that fn's host-side cost (Python dispatch, argument checks: tens of us for
            # SDPA) is not timed as GPU idle time after the start event; without it the
            # measured SDPA time moved by up to 20% between runs.
            torch.cuda._sleep(1_000_000)
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        return statistics.median(times)

    @staticmethod
    def steady_ms(fns, replays=20):
        """Time per call in steady state: the calls fns[0](), fns[1](), ... back to back in
        one CUDA graph (no launch gaps), each over its own inputs so that together they
        exceed L2 (the caller sizes the list), replayed `replays` times; median replay
        time / len(fns). What a call costs between other kernels of a decode step, with
        no L2 flush (a flush leaves L2 dirty: its write-back competes with the first
        microseconds of the timed kernel). Needs calls without host synchronisation."""
        for fn in fns:
            fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for fn in fns:
                fn()
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(replays):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        del graph
        return statistics.median(times) / len(fns)

    def copies_for(self, nbytes, at_least=2, at_most=256):
        """How many input sets of nbytes exceed three times L2."""
        l2 = self.flush.numel() // 4
        return max(at_least, min(at_most, -(-3 * l2 // max(nbytes, 1))))

    @staticmethod
    def warm_up(seconds=0.5):
        """Keeps the GPU busy for a while so that clocks and power settle before the first
        measurement (a cold first copy measured 4x below the card's bandwidth)."""
        a = torch.randn(4096, 4096, device="cuda")
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(10):
                a = (a @ a).clamp_(-1, 1)
            torch.cuda.synchronize()

    def copy_gbs(self, nbytes):
        """Device-to-device copy bandwidth (bytes read + written) for nbytes."""
        a = torch.ones(nbytes, dtype=torch.uint8, device="cuda")
        b = torch.empty_like(a)
        ms = self.median_ms(lambda: b.copy_(a))
        return 2 * nbytes / (ms * 1e-3) / 1e9


def gpu_header():
    p = torch.cuda.get_device_properties(0)
    return {"gpu": p.name, "sms": p.multi_processor_count, "l2_mb": p.L2_cache_size / 2**20,
            "torch": torch.__version__, "cuda": torch.version.cuda}
