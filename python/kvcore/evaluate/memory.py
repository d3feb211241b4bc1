"""Peak device memory of a block of work."""
import torch


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak_bytes``: the CUDA allocator's
    high-water mark during the block (weights, activations and cache together); None on
    CPU, where eval reports the cache's own bytes instead (the process RSS mixes in the
    allocator's caching and the tokenizer, and never goes down)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.peak_bytes = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        return False


def process_peak_rss_bytes():
    """The process's peak resident memory so far (Linux/macOS), or None."""
    try:
        import resource
        import sys

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(r if sys.platform == "darwin" else r * 1024)
    except Exception:  # noqa: BLE001
        return None
