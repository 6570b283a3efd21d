/* A service that proves it is alive: a Beater rewrites its heartbeat file
 * every second, and a checker (here the same program) asks hb_is_alive.
 *
 *   cargo rustc --release --lib --features capi --crate-type staticlib
 *   cc -std=c11 -I include examples/c/beat.c target/release/libheartbeat.a \
 *      -lpthread -ldl -lm -o beat
 *   ./beat /tmp/myservice.json
 */
#include <stdio.h>

#include "heartbeat.h"

static void on_missed_beat(const char *message, void *user_data) {
    (void)user_data;
    fprintf(stderr, "missed a beat: %s\n", message);
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "myservice.heartbeat.json";

    hb_beater_options options;
    hb_beater_options_default(&options);
    options.state_file = path;
    options.interval_ms = 1000;
    hb_metadata_entry metadata[] = {{"role", "worker"}};
    options.metadata = metadata;
    options.metadata_len = 1;
    hb_beater_callbacks callbacks = {NULL, on_missed_beat, NULL, NULL, NULL};

    hb_beater *beater = NULL;
    if (hb_beater_new(&options, &callbacks, &beater) != HB_OK) {
        fprintf(stderr, "hb_beater_new: %s\n", hb_last_error_message());
        return 1;
    }
    if (hb_beater_start(beater) != HB_OK) { /* the first beat is on disk now */
        fprintf(stderr, "hb_beater_start: %s\n", hb_last_error_message());
        hb_beater_free(beater);
        return 1;
    }

    /* ... the service's work; elsewhere, perhaps in another process: */
    int alive = hb_is_alive(path, 3000);
    printf("%s is %s\n", path, alive ? "alive" : "not alive");
    if (!alive) {
        fprintf(stderr, "why: %s\n", hb_last_error_message());
    }

    hb_beater_free(beater); /* stops the thread, then releases the beater */
    return alive ? 0 : 1;
}
