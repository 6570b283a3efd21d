/* The heartbeat C API's Scanner from C. Run by tests/capi_c.rs as
 * `scanner DIR`, where DIR already holds 2 ORPHAN files (a reaped child's
 * pid) and 1 STALE one (this test's parent, an hour ago). This program adds
 * 2 FRESH ones (hb_write_state, and a Beater in directory mode), scans, and
 * checks the counts by status; prints `PASS` at the end. */
#include "check.h"

#include <math.h>
#include <unistd.h>

int main(int argc, char **argv) {
    CHECK(argc == 2);
    const char *dir = argv[1];
    char path[4096];
    snprintf(path, sizeof path, "%s/heartbeat-%ld-own.json", dir, (long)getpid());
    CHECK_OK(hb_write_state(path, NULL, 1000));

    hb_beater_options bo;
    CHECK_OK(hb_beater_options_default(&bo));
    bo.directory = dir;
    bo.interval_ms = 1000;
    hb_beater *b = NULL;
    CHECK_OK(hb_beater_new(&bo, NULL, &b));
    CHECK_OK(hb_beater_start(b));
    char *uuid = NULL;
    CHECK_OK(hb_beater_uuid(b, &uuid));

    hb_scan_entry *entries = NULL;
    size_t len = 0;
    CHECK_OK(hb_scan(dir, 60000, &entries, &len));
    CHECK(entries != NULL);
    int counts[5] = {0};
    int beater_seen = 0;
    for (size_t i = 0; i < len; i++) {
        hb_scan_entry *e = &entries[i];
        CHECK(e->path != NULL && strstr(e->path, "heartbeat-") != NULL);
        CHECK((int)e->status >= 0 && (int)e->status < 5);
        counts[e->status]++;
        printf("%s pid=%lld status=%d age=%.3f uuid=%s host=%s\n", e->path, (long long)e->pid,
               (int)e->status, e->age_sec, e->uuid ? e->uuid : "(null)",
               e->hostname ? e->hostname : "(null)");
        CHECK(!isnan(e->age_sec) && e->age_sec >= 0.0);
        if (e->status == HB_SCAN_FRESH) {
            CHECK(e->pid == (long long)getpid());
            CHECK(e->uuid != NULL && e->hostname != NULL);
            if (strcmp(e->uuid, uuid) == 0) {
                beater_seen++;
            }
        }
    }
    CHECK(len == 5);
    CHECK(counts[HB_SCAN_FRESH] == 2);
    CHECK(counts[HB_SCAN_ORPHAN] == 2);
    CHECK(counts[HB_SCAN_STALE] == 1);
    CHECK(counts[HB_SCAN_REMOTE] == 0 && counts[HB_SCAN_SKEWED] == 0);
    CHECK(beater_seen == 1);
    hb_scan_free(entries, len);
    hb_scan_free(NULL, 0);

    bool active = false;
    CHECK_OK(hb_scanner_is_active(dir, 60000, &active));
    CHECK(active);
    /* With the default threshold (0) too. */
    active = false;
    CHECK_OK(hb_scanner_is_active(dir, 0, &active));
    CHECK(active);

    /* Once this process's files are gone, nothing is FRESH. */
    CHECK_OK(hb_beater_stop(b)); /* directory mode: removes its file */
    CHECK(remove(path) == 0);
    CHECK_OK(hb_scanner_is_active(dir, 60000, &active));
    CHECK(!active);
    CHECK_OK(hb_scan(dir, 60000, &entries, &len));
    CHECK(len == 3);
    hb_scan_free(entries, len);

    /* A missing directory is an empty scan: NULL and 0. */
    char missing[4096];
    snprintf(missing, sizeof missing, "%s/no-such-dir", dir);
    entries = (hb_scan_entry *)1;
    CHECK_OK(hb_scan(missing, 0, &entries, &len));
    CHECK(entries == NULL && len == 0);
    hb_scan_free(entries, len);

    /* Errors: nothing written. */
    entries = NULL;
    len = 42;
    CHECK_ERR(hb_scan(NULL, 0, &entries, &len), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_scan("\xff", 0, &entries, &len), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_scan(dir, 0, NULL, &len), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_scan(dir, 0, &entries, NULL), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_scan(dir, 400ull * 24 * 3600 * 1000, &entries, &len), HB_ERR_INVALID_ARGUMENT);
    CHECK(entries == NULL && len == 42);
    CHECK_ERR(hb_scanner_is_active(NULL, 0, &active), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_scanner_is_active("\xff", 0, &active), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_scanner_is_active(dir, 0, NULL), HB_ERR_INVALID_ARGUMENT);
    /* A file where the directory should be: it cannot be listed. */
    CHECK_OK(hb_write_state(path, NULL, 1000));
    CHECK_ERR(hb_scan(path, 0, &entries, &len), HB_ERR_IO);
    CHECK(remove(path) == 0);

    hb_string_free(uuid);
    hb_beater_free(b);
    printf("PASS\n");
    return 0;
}
