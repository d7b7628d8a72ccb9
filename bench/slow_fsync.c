/* Models flash storage in benchmarks: every fsync/fdatasync first waits
 * SLOW_FSYNC_US microseconds, then syncs for real. Loaded with LD_PRELOAD into the
 * process under test (the agent, or the anchor), never into the agent in service.
 * Built by bench/ at run time: cc -shared -fPIC -o slow_fsync.so slow_fsync.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static void wait_like_flash(void) {
    const char *us = getenv("SLOW_FSYNC_US");
    long delay = us ? atol(us) : 2000;
    struct timespec t = {delay / 1000000, (delay % 1000000) * 1000};
    nanosleep(&t, NULL);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    wait_like_flash();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    wait_like_flash();
    return real(fd);
}
