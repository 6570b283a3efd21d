/* A service that beats its own heartbeat file and monitors its worker
 * sessions: each worker reports in with hb_monitor_beat, and the service's
 * loop polls hb_monitor_next_event to learn which ones went silent. Here
 * worker-1 keeps beating and worker-2 falls silent, so worker-2 times out.
 *
 *   cargo rustc --release --lib --features capi --crate-type staticlib
 *   cc -std=c11 -I include examples/c/monitor.c target/release/libheartbeat.a \
 *      -lpthread -ldl -lm -o monitor
 *   ./monitor /tmp/myservice.json
 */
#include <stdio.h>

#include "heartbeat.h"

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "myservice.heartbeat.json";

    /* This process's own heartbeat file, rewritten every second. */
    hb_beater_options bo;
    hb_beater_options_default(&bo);
    bo.state_file = path;
    bo.interval_ms = 1000;
    hb_beater *beater = NULL;
    if (hb_beater_new(&bo, NULL, &beater) != HB_OK || hb_beater_start(beater) != HB_OK) {
        fprintf(stderr, "beater: %s\n", hb_last_error_message());
        hb_beater_free(beater);
        return 1;
    }

    /* Its workers: silent for 200 ms at a sweep is a miss, 2 misses is dead. */
    hb_monitor_options mo;
    hb_monitor_options_default(&mo);
    mo.timeout_ms = 200;
    mo.check_interval_ms = 100;
    mo.max_missed_beats = 2;
    hb_monitor *monitor = NULL;
    if (hb_monitor_new(&mo, NULL, &monitor) != HB_OK || hb_monitor_start(monitor) != HB_OK) {
        fprintf(stderr, "monitor: %s\n", hb_last_error_message());
        hb_monitor_free(monitor);
        hb_beater_free(beater);
        return 1;
    }
    hb_monitor_register(monitor, "worker-1", "worker");
    hb_monitor_register(monitor, "worker-2", "worker");

    /* The service's loop: wait up to 100 ms for an event, then do its work
     * (here: worker-1 reports in). Ends when worker-2 is declared dead, or
     * after 100 rounds. */
    int dead = 0;
    for (int round = 0; round < 100 && !dead; round++) {
        hb_event ev;
        hb_result rc = hb_monitor_next_event(monitor, 100, &ev);
        if (rc == HB_OK) {
            switch (ev.kind) {
            case HB_EVENT_WARNING:
                printf("%s missed %u beat(s)\n", ev.session_id, (unsigned)ev.missed_beats);
                break;
            case HB_EVENT_TIMED_OUT:
                printf("%s (%s) timed out\n", ev.session_id, ev.agent_type);
                dead = 1; /* restart it, page someone, ... */
                break;
            default:
                break;
            }
            hb_event_free(&ev); /* releases the strings inside */
        } else if (rc != HB_ERR_TIMEOUT) {
            fprintf(stderr, "hb_monitor_next_event: %s\n", hb_last_error_message());
            break;
        }
        hb_monitor_beat(monitor, "worker-1");
    }

    hb_monitor_free(monitor); /* stops the sweeper, then releases it */
    hb_beater_free(beater);
    return dead ? 0 : 1;
}
