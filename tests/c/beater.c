/* The heartbeat C API from C: a Beater with callbacks, the file readers, and
 * every error path. Run by tests/capi_c.rs as `beater DIR`; prints
 * `STATE_FILE=...` for the Rust side to read, and `PASS` at the end. */
#include "check.h"

#include <stdatomic.h>

struct counts {
    atomic_int beats;
    atomic_int missed;
    atomic_int dead_checks;
    atomic_int target_dead;
    atomic_int reentrant_ok;
    const char *path;
    const hb_beater *self; /* for the callback that stops its own beater */
};

static void on_beat(void *user_data) {
    struct counts *c = user_data;
    /* Calling back into the library from the beat thread. */
    if (hb_version()[0] != '\0' && hb_is_alive(c->path, 60000)) {
        atomic_fetch_add(&c->reentrant_ok, 1);
    }
    atomic_fetch_add(&c->beats, 1);
}

static void on_missed_beat(const char *message, void *user_data) {
    struct counts *c = user_data;
    if (message != NULL && message[0] != '\0') {
        atomic_fetch_add(&c->missed, 1);
    }
}

static bool is_dead(void *user_data) {
    struct counts *c = user_data;
    atomic_fetch_add(&c->dead_checks, 1);
    return true;
}

static void on_target_dead(void *user_data) {
    struct counts *c = user_data;
    atomic_fetch_add(&c->target_dead, 1);
}

static void stop_self(void *user_data) {
    struct counts *c = user_data;
    atomic_fetch_add(&c->beats, 1);
    CHECK(hb_beater_stop(c->self) == HB_OK);
}

static void wait_for(atomic_int *v, int at_least, long bound_ms) {
    for (long waited = 0; atomic_load(v) < at_least && waited < bound_ms; waited += 10) {
        sleep_ms(10);
    }
}

static void test_beater(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/service.json", dir);

    struct counts c = {0};
    c.path = path;
    hb_metadata_entry meta[] = {{"role", "worker"}, {"lang", "c"}};
    hb_beater_options o;
    CHECK_OK(hb_beater_options_default(&o));
    CHECK(o.interval_ms == 10000 && o.remove_on_stop < 0 && o.state_file == NULL);
    o.state_file = path;
    o.interval_ms = 1000;
    o.metadata = meta;
    o.metadata_len = 2;
    hb_beater_callbacks cb = {on_beat, on_missed_beat, is_dead, on_target_dead, &c};

    hb_beater *b = NULL;
    CHECK_OK(hb_beater_new(&o, &cb, &b));
    CHECK(b != NULL);
    CHECK_OK(hb_beater_start(b));
    CHECK_ERR(hb_beater_start(b), HB_ERR_ALREADY_RUNNING);
    CHECK(hb_is_alive(path, 5000));

    wait_for(&c.beats, 2, 5000);
    CHECK(atomic_load(&c.beats) >= 2);
    CHECK(atomic_load(&c.reentrant_ok) >= 2);
    CHECK(atomic_load(&c.dead_checks) >= 2);
    CHECK(atomic_load(&c.target_dead) >= 2);
    CHECK(atomic_load(&c.missed) == 0);

    CHECK_OK(hb_beater_beat(b));
    char *file = NULL;
    CHECK_OK(hb_beater_state_file(b, &file));
    CHECK(strcmp(file, path) == 0);
    hb_string_free(file);
    char *uuid = NULL;
    CHECK_OK(hb_beater_uuid(b, &uuid));
    CHECK(strlen(uuid) == 36);
    printf("UUID=%s\n", uuid);
    hb_string_free(uuid);

    CHECK_OK(hb_beater_stop(b));
    CHECK_OK(hb_beater_stop(b)); /* again: harmless */
    int beats = atomic_load(&c.beats);
    sleep_ms(1200);
    CHECK(atomic_load(&c.beats) == beats); /* stopped means stopped */
    CHECK_OK(hb_beater_start(b));          /* and it starts again */
    hb_beater_free(b);                     /* stops first */
    printf("beats=%d\n", beats);

    /* The readers. */
    CHECK(hb_is_alive(path, 60000));
    CHECK(hb_last_error_message()[0] == '\0');
    uint64_t age = UINT64_MAX;
    CHECK_OK(hb_age_ms(path, &age));
    CHECK(age < 60000);
    char *json = NULL;
    CHECK_OK(hb_read_state_json(path, &json));
    CHECK(strstr(json, "\"worker\"") != NULL && strstr(json, "\"pid\"") != NULL);
    hb_string_free(json);
    printf("STATE_FILE=%s\n", path);
}

static void test_missed_beats(const char *dir) {
    char path[4096];
    /* Under a regular file: no directory can be made there. */
    snprintf(path, sizeof path, "%s/plain-file", dir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    fclose(f);
    snprintf(path, sizeof path, "%s/plain-file/x.json", dir);
    struct counts c = {0};
    c.path = path;
    hb_beater_options o;
    CHECK_OK(hb_beater_options_default(&o));
    o.state_file = path;
    o.interval_ms = 1000;
    hb_beater_callbacks cb = {NULL, on_missed_beat, NULL, NULL, &c};
    hb_beater *b = NULL;
    CHECK_OK(hb_beater_new(&o, &cb, &b));
    CHECK_ERR(hb_beater_beat(b), HB_ERR_IO);
    CHECK_OK(hb_beater_start(b)); /* the first beat's failure goes to the callback */
    wait_for(&c.missed, 1, 5000);
    CHECK(atomic_load(&c.missed) >= 1);
    hb_beater_free(b);
}

static void test_stop_from_callback(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/self-stop.json", dir);
    struct counts c = {0};
    c.path = path;
    hb_beater_options o;
    CHECK_OK(hb_beater_options_default(&o));
    o.state_file = path;
    o.interval_ms = 1000;
    hb_beater_callbacks cb = {stop_self, NULL, NULL, NULL, &c};
    hb_beater *b = NULL;
    CHECK_OK(hb_beater_new(&o, &cb, &b));
    c.self = b;
    CHECK_OK(hb_beater_start(b));
    wait_for(&c.beats, 1, 5000);
    sleep_ms(1500);
    CHECK(atomic_load(&c.beats) == 1); /* it stopped itself after one beat */
    CHECK_OK(hb_beater_start(b));      /* and starts again */
    wait_for(&c.beats, 2, 5000);
    CHECK(atomic_load(&c.beats) == 2);
    hb_beater_free(b);
}

static void test_errors(const char *dir) {
    char path[4096], missing[4096], corrupt[4096];
    snprintf(path, sizeof path, "%s/oneshot.json", dir);
    snprintf(missing, sizeof missing, "%s/missing.json", dir);
    snprintf(corrupt, sizeof corrupt, "%s/corrupt.json", dir);
    FILE *f = fopen(corrupt, "w");
    CHECK(f != NULL);
    fputs("{not json", f);
    fclose(f);
    const char bad_utf8[] = {'/', 't', 'm', 'p', '/', (char)0xff, '\0'};
    uint64_t age = 42;
    char *json = NULL;

    /* NULL arguments. */
    CHECK(!hb_is_alive(NULL, 1000));
    CHECK(strstr(hb_last_error_message(), "path is NULL") != NULL);
    CHECK_ERR(hb_age_ms(NULL, &age), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_age_ms(path, NULL), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_read_state_json(path, NULL), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_write_state(NULL, NULL, 1000), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_beater_options_default(NULL), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_beater_start(NULL), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_beater_stop(NULL), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_beater_beat(NULL), HB_ERR_INVALID_ARGUMENT);

    /* Bad UTF-8. */
    CHECK(!hb_is_alive(bad_utf8, 1000));
    CHECK(strstr(hb_last_error_message(), "UTF-8") != NULL);
    CHECK_ERR(hb_age_ms(bad_utf8, &age), HB_ERR_INVALID_ARGUMENT);

    /* Files that are not there or not heartbeats. */
    CHECK_ERR(hb_age_ms(missing, &age), HB_ERR_NOT_FOUND);
    CHECK_ERR(hb_read_state_json(missing, &json), HB_ERR_NOT_FOUND);
    CHECK_ERR(hb_read_state_json(corrupt, &json), HB_ERR_BAD_FILE);
    CHECK(age == 42 && json == NULL); /* outputs untouched on failure */
    CHECK(!hb_is_alive(missing, 1000));
    CHECK(hb_last_error_message()[0] != '\0');

    /* One-shot beats. */
    CHECK_ERR(hb_write_state(path, "[1]", 1000), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_write_state(path, "{", 1000), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_write_state(path, NULL, 10), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_write_state(dir, NULL, 1000), HB_ERR_INVALID_ARGUMENT);
    CHECK_OK(hb_write_state(path, "{\"job\": \"nightly\"}", 5000));
    CHECK(hb_is_alive(path, 10000));
    CHECK(!hb_is_alive(path, UINT64_MAX)); /* a negative number cast: out of range */
    CHECK(strstr(hb_last_error_message(), "max_age_ms") != NULL);

    /* Beater options. */
    hb_beater_options o;
    CHECK_OK(hb_beater_options_default(&o));
    hb_beater *b = (hb_beater *)&o; /* not written on failure */
    CHECK_ERR(hb_beater_new(NULL, NULL, &b), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_beater_new(&o, NULL, &b), HB_ERR_INVALID_ARGUMENT); /* neither file nor directory */
    o.state_file = path;
    o.directory = dir;
    CHECK_ERR(hb_beater_new(&o, NULL, &b), HB_ERR_INVALID_ARGUMENT); /* both */
    o.directory = NULL;
    CHECK_ERR(hb_beater_new(&o, NULL, NULL), HB_ERR_INVALID_ARGUMENT);
    o.interval_ms = 999;
    CHECK_ERR(hb_beater_new(&o, NULL, &b), HB_ERR_INVALID_ARGUMENT);
    o.interval_ms = 1000;
    o.metadata_len = 1;
    CHECK_ERR(hb_beater_new(&o, NULL, &b), HB_ERR_INVALID_ARGUMENT);
    hb_metadata_entry bad[] = {{"k", NULL}};
    o.metadata = bad;
    CHECK_ERR(hb_beater_new(&o, NULL, &b), HB_ERR_INVALID_ARGUMENT);
    CHECK(strstr(hb_last_error_message(), "metadata[0].value") != NULL);
    o.metadata = NULL;
    o.metadata_len = 0;
    o.state_file = dir;
    CHECK_ERR(hb_beater_new(&o, NULL, &b), HB_ERR_INVALID_ARGUMENT); /* a directory */
    CHECK(b == (hb_beater *)&o);

    /* Freeing nothing is nothing. */
    hb_beater_free(NULL);
    hb_string_free(NULL);
    CHECK(hb_last_error_message() != NULL);
}

/* Freed by an atexit handler, after this thread's Rust storage is gone: the
 * calls must work (their messages are lost), never abort the process. */
static hb_beater *at_exit_beater = NULL;

static void free_at_exit(void) {
    hb_beater_free(at_exit_beater);
    CHECK(!hb_is_alive(NULL, 1000));
    CHECK(hb_last_error_message() != NULL);
    puts("freed at exit");
}

static void test_free_at_exit(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/at-exit.json", dir);
    hb_beater_options o;
    CHECK_OK(hb_beater_options_default(&o));
    o.state_file = path;
    o.interval_ms = 1000;
    CHECK_OK(hb_beater_new(&o, NULL, &at_exit_beater));
    CHECK_OK(hb_beater_start(at_exit_beater));
    CHECK(atexit(free_at_exit) == 0);
}

/* A length no array can have is refused, not read. */
static void test_huge_metadata_len(void) {
    hb_metadata_entry meta[] = {{"role", "worker"}};
    hb_beater_options o;
    CHECK_OK(hb_beater_options_default(&o));
    o.state_file = "/tmp/never-written.json";
    o.metadata = meta;
    o.metadata_len = (size_t)-1;
    hb_beater *b = NULL;
    CHECK_ERR(hb_beater_new(&o, NULL, &b), HB_ERR_INVALID_ARGUMENT);
    CHECK(b == NULL);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    printf("heartbeat %s\n", hb_version());
    CHECK(hb_last_error_message() != NULL && hb_last_error_message()[0] == '\0');
    test_errors(argv[1]);
    test_beater(argv[1]);
    test_missed_beats(argv[1]);
    test_stop_from_callback(argv[1]);
    test_huge_metadata_len();
    test_free_at_exit(argv[1]);
    puts("PASS");
    return 0;
}
