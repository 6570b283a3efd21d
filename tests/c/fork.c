/* Pre-forking services: a parent that starts nothing forks 4 children; each
 * starts a Beater in directory mode, beats once and exits. Run by
 * tests/capi_c.rs as `fork DIR`: DIR ends up with 4 heartbeat files of 4
 * distinct uuids (checked here and by the Rust side). */
#include "check.h"

#include <dirent.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHILDREN 4

static int child(const char *dir, const hb_beater *inherited) {
    /* A handle made before the fork is an error here, never a hang. */
    CHECK_ERR(hb_beater_start(inherited), HB_ERR_FORKED);
    CHECK(strstr(hb_last_error_message(), "fork") != NULL);
    CHECK_ERR(hb_beater_beat(inherited), HB_ERR_FORKED);
    hb_beater_free((hb_beater *)inherited); /* forgotten, not joined */

    hb_beater_options o;
    CHECK_OK(hb_beater_options_default(&o));
    o.directory = dir;
    o.interval_ms = 1000;
    o.remove_on_stop = 0; /* leave the file for the parent to count */
    hb_beater *b = NULL;
    CHECK_OK(hb_beater_new(&o, NULL, &b));
    CHECK_OK(hb_beater_start(b));
    CHECK_OK(hb_beater_stop(b));
    char *uuid = NULL;
    CHECK_OK(hb_beater_uuid(b, &uuid));
    printf("child %d uuid %s\n", (int)getpid(), uuid);
    fflush(stdout);
    hb_string_free(uuid);
    hb_beater_free(b);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    char one_shot[4096];
    snprintf(one_shot, sizeof one_shot, "%s/../parent-one-shot.json", dir);
    /* The parent draws a uuid before forking, so its random state is keyed
     * and counted when the children inherit it. */
    CHECK_OK(hb_write_state(one_shot, NULL, 1000));
    hb_beater_options o;
    CHECK_OK(hb_beater_options_default(&o));
    o.directory = dir;
    hb_beater *inherited = NULL; /* made, never started */
    CHECK_OK(hb_beater_new(&o, NULL, &inherited));
    fflush(stdout);

    pid_t pids[CHILDREN];
    for (int i = 0; i < CHILDREN; i++) {
        pids[i] = fork();
        CHECK(pids[i] >= 0);
        if (pids[i] == 0) {
            _exit(child(dir, inherited));
        }
    }
    for (int i = 0; i < CHILDREN; i++) {
        int status = 0;
        CHECK(waitpid(pids[i], &status, 0) == pids[i]);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    hb_beater_free(inherited);

    char names[CHILDREN][256];
    int found = 0;
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (strncmp(e->d_name, "heartbeat-", 10) != 0) {
            continue;
        }
        CHECK(found < CHILDREN);
        snprintf(names[found], sizeof names[found], "%s", e->d_name);
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        CHECK(hb_is_alive(path, 60000));
        found++;
    }
    closedir(d);
    CHECK(found == CHILDREN);
    for (int i = 0; i < CHILDREN; i++) {
        for (int j = i + 1; j < CHILDREN; j++) {
            /* heartbeat-PID-UUID.json: the uuid follows the second '-'. */
            CHECK(strcmp(strchr(names[i] + 10, '-'), strchr(names[j] + 10, '-')) != 0);
        }
    }

    /* A beater running at fork time: its thread is not in the child, whose
     * stop is refused and whose free only forgets, without hanging. */
    char running_path[4096];
    snprintf(running_path, sizeof running_path, "%s/../running.json", dir);
    o.directory = NULL;
    o.state_file = running_path;
    o.interval_ms = 1000;
    hb_beater *running = NULL;
    CHECK_OK(hb_beater_new(&o, NULL, &running));
    CHECK_OK(hb_beater_start(running));
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        CHECK_ERR(hb_beater_stop(running), HB_ERR_FORKED);
        hb_beater_free(running);
        fflush(stdout); /* _exit does not */
        _exit(0);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(hb_is_alive(running_path, 60000));
    CHECK_OK(hb_beater_stop(running));
    hb_beater_free(running);

    puts("PASS");
    return 0;
}
