// System queries Swift's Glibc overlay does not expose (they need _GNU_SOURCE).
#define _GNU_SOURCE
#include <sched.h>
#include <unistd.h>
#include "chost.h"

int host_available_cores(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

#include <sys/prctl.h>
#include <signal.h>
void host_exit_with_parent(void) { prctl(PR_SET_PDEATHSIG, SIGTERM); }
