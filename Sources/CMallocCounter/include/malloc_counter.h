#ifndef TCPAOD_MALLOC_COUNTER_H
#define TCPAOD_MALLOC_COUNTER_H
/// Number of heap allocations (malloc, calloc, realloc, posix_memalign, aligned_alloc,
/// memalign) made by the whole process so far, including those of libcrypto and the Swift
/// runtime. Only linked into tcpaod-microbench.
unsigned long tcpaod_malloc_count(void);
#endif
