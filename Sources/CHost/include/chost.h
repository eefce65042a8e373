#ifndef CHOST_H
#define CHOST_H
// System queries that Swift's Glibc overlay does not expose (they need _GNU_SOURCE).

/// Cores this process may run on (its affinity mask).
int host_available_cores(void);
/* Asks the kernel to send SIGTERM to this process when its parent dies (child workers of `serve --local`). */
void host_exit_with_parent(void);

#endif
