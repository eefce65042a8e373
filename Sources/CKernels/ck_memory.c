// The allocator's thresholds (see ScratchMemory.swift): malloc.h is not in Swift's Glibc module.
#include <malloc.h>
#include "ckernels.h"

void ck_keep_freed_scratch(int bytes) {
    mallopt(M_MMAP_THRESHOLD, bytes);
    mallopt(M_TRIM_THRESHOLD, bytes);
}
