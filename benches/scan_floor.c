/* The syscall floor of `heartbeat scan DIR`, for benches/scan_process.py.
 *
 * One thread: list DIR, and for each regular file named heartbeat-*.json
 * openat it (O_RDONLY | O_NOFOLLOW | O_CLOEXEC), read it to EOF into a
 * 64 KiB buffer, close it. No parsing, no kill, no output per file: prints
 * "<files> <bytes>" at the end so nothing is optimised away.
 *
 * An optional second argument adds what the scanner does on top, to price
 * each part: `f` an fstat of the open file (the scanner's check that it is
 * still a regular file, not a FIFO or device swapped in after listing), `k`
 * a kill(pid, 0) for the pid in the file's name (the liveness probe), `F`
 * opening without O_NOFOLLOW (to price that flag).
 *
 *   gcc -O2 -o scan_floor benches/scan_floor.c && ./scan_floor DIR [fkF]
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char buf[65536];

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) { fprintf(stderr, "usage: %s DIR [fkF]\n", argv[0]); return 2; }
    const char *mode = argc == 3 ? argv[2] : "";
    int with_fstat = strchr(mode, 'f') != NULL, with_kill = strchr(mode, 'k') != NULL;
    int flags = O_RDONLY | O_CLOEXEC | (strchr(mode, 'F') ? 0 : O_NOFOLLOW);
    long alive = 0;
    DIR *dir = opendir(argv[1]);
    if (!dir) { perror(argv[1]); return 2; }
    int dfd = dirfd(dir);
    long files = 0, bytes = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len < 15 || strncmp(e->d_name, "heartbeat-", 10) != 0 ||
            strcmp(e->d_name + len - 5, ".json") != 0)
            continue;
        if (e->d_type == DT_UNKNOWN) { /* file systems without d_type */
            struct stat st;
            if (fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) || !S_ISREG(st.st_mode)) continue;
        } else if (e->d_type != DT_REG) {
            continue;
        }
        int fd = openat(dfd, e->d_name, flags);
        if (fd < 0) continue;
        if (with_fstat) {
            struct stat st;
            if (fstat(fd, &st) || !S_ISREG(st.st_mode)) { close(fd); continue; }
        }
        if (with_kill) {
            long pid = strtol(e->d_name + 10, NULL, 10);
            if (pid > 0 && kill((pid_t)pid, 0) == 0) alive++;
        }
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0) bytes += n;
        close(fd);
        files++;
    }
    closedir(dir);
    printf("%ld %ld\n", files, bytes);
    if (with_kill) fprintf(stderr, "%ld alive\n", alive);
    return 0;
}
