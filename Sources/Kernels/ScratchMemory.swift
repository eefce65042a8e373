import CKernels

/// How the process's allocator treats the scratch a forward pass allocates and frees (activations, scores,
/// experts' rows; megabytes a layer in a prompt). glibc maps each block above its mmap threshold on its own and
/// returns freed heap to the system past its trim threshold, so every layer of a prompt paid for fresh pages:
/// page faults and zeroing were 12% of prefill on the benchmark model (perf), and with both thresholds raised
/// prefill ran 1.5× faster (`perplexity`, 512-token chunks, 250 → 378 tok/s). Freed scratch then stays with the
/// process for the next layer — but each thread's arena keeps its own, so the process holds more than one step's
/// peak (a worker under a 13.5 MiB budget peaked 10–18 MB higher). Only a process without a `--memory` budget
/// keeps its scratch; one with a budget returns what it frees, as before.
public enum ScratchMemory {
    /// Blocks up to this size come from the heap, and this much free heap is kept rather than returned.
    public static let keptBytes: Int32 = 256 << 20

    /// Raises both thresholds (glibc reads them on each call). For a process with no memory budget only.
    public static func keepFreedScratch() {
        ck_keep_freed_scratch(keptBytes)
    }
}
