/* Models a power cut in tests: after every fsync/fdatasync the agent makes, the file's
 * path and its size at that moment are appended to $SYNCED_LOG, one line each. What was
 * written past the last size logged for a file was never made durable: a power cut may
 * take it. Loaded with LD_PRELOAD into the agent under test, never into a station's.
 * Built by tests/scenarios/test_power_loss.py: cc -shared -fPIC -o x.so synced_log.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static void note(int fd) {
    const char *log = getenv("SYNCED_LOG");
    char link[64], path[4096], line[4200];
    struct stat st;
    if (!log || fstat(fd, &st) != 0) return;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return;
    path[n] = 0;
    int out = open(log, O_WRONLY | O_APPEND | O_CREAT, 0600);
    if (out < 0) return;
    int len = snprintf(line, sizeof line, "%s %lld\n", path, (long long)st.st_size);
    if (write(out, line, len) != len) { /* a test reads the log; a short line fails it */ }
    close(out);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int result = real(fd);
    if (result == 0) note(fd);
    return result;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int result = real(fd);
    if (result == 0) note(fd);
    return result;
}
