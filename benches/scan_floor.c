/* The syscall floor of `heartbeat scan DIR`, for benches/scan_process.py.
 *
 * One thread: list DIR, and for each regular file named heartbeat-*.json
 * openat it (O_RDONLY | O_NOFOLLOW | O_CLOEXEC), read it to EOF into a
 * 64 KiB buffer, close it. No parsing, no kill, no output per file: prints
 * "<files> <bytes>" at the end so nothing is optimised away.
 *
 *   gcc -O2 -o scan_floor benches/scan_floor.c && ./scan_floor DIR
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char buf[65536];

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s DIR\n", argv[0]); return 2; }
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
        int fd = openat(dfd, e->d_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0) bytes += n;
        close(fd);
        files++;
    }
    closedir(dir);
    printf("%ld %ld\n", files, bytes);
    return 0;
}
