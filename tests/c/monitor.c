/* The heartbeat C API's Monitor from C: a session that times out, seen both
 * by callback and by poll (in order), every session call and its error
 * paths, and callbacks that call back into the library. Run by
 * tests/capi_c.rs as `monitor`; prints `PASS` at the end. */
#include "check.h"

#include <math.h>
#include <stdatomic.h>

struct counts {
    atomic_int warnings;
    atomic_int timeouts;
    atomic_int failures;
    atomic_int reentrant_ok;
    atomic_int registered_seen; /* hb_monitor_registered_count from on_timeout */
    hb_monitor *self;
};

static void on_warning(const char *session_id, uint32_t missed, void *user_data) {
    struct counts *c = user_data;
    if (strcmp(session_id, "w1") == 0 && missed >= 1) {
        atomic_fetch_add(&c->warnings, 1);
    }
}

static void on_timeout(const char *session_id, const char *agent_type, void *user_data) {
    struct counts *c = user_data;
    /* Calling back into the library from the sweeper thread. */
    size_t n = hb_monitor_registered_count(c->self);
    hb_session_status st;
    if (hb_last_error_message()[0] == '\0' &&
        hb_monitor_status(c->self, session_id, &st) == HB_ERR_NOT_FOUND) {
        atomic_store(&c->registered_seen, (int)n);
        atomic_fetch_add(&c->reentrant_ok, 1);
    }
    if (strcmp(session_id, "w1") == 0 && strcmp(agent_type, "worker") == 0) {
        atomic_fetch_add(&c->timeouts, 1);
    }
}

static void on_failure(const char *session_id, const char *agent_type, void *user_data) {
    struct counts *c = user_data;
    if (strcmp(session_id, "w1") == 0 && strcmp(agent_type, "worker") == 0) {
        atomic_fetch_add(&c->failures, 1);
    }
}

/* The next event, which must come within 5 s and be of this kind for this session. */
static void expect_event(hb_monitor *m, hb_event_kind kind, const char *id, hb_event *ev) {
    CHECK_OK(hb_monitor_next_event(m, 5000, ev));
    if (ev->kind != kind || strcmp(ev->session_id, id) != 0) {
        fprintf(stderr, "wanted event %d for %s, got %d for %s\n", (int)kind, id, (int)ev->kind,
                ev->session_id);
        exit(1);
    }
}

static void test_options(void) {
    hb_monitor_options o;
    CHECK_OK(hb_monitor_options_default(&o));
    CHECK(o.timeout_ms == 30000 && o.check_interval_ms == 5000 && o.max_missed_beats == 3);
    CHECK(o.detector == HB_DETECTOR_FIXED);
    CHECK(o.phi.threshold == 8.0 && o.phi.warn_threshold == 4.0 && o.phi.max_samples == 1000);
    CHECK(o.phi.acceptable_pause_ms == 3000 && o.phi.expected_interval_ms == 10000);
    CHECK(o.event_capacity == 1024);
    CHECK_ERR(hb_monitor_options_default(NULL), HB_ERR_INVALID_ARGUMENT);

    hb_monitor *m = NULL;
    /* Callbacks only: no poll, and polling says so. */
    hb_monitor_options no_poll = o;
    no_poll.event_capacity = 0;
    CHECK_OK(hb_monitor_new(&no_poll, NULL, &m));
    hb_event ev;
    CHECK_ERR(hb_monitor_next_event(m, 0, &ev), HB_ERR_INVALID_ARGUMENT);
    hb_monitor_free(m);
    m = NULL;
    no_poll.event_capacity = (size_t)1 << 21;
    CHECK_ERR(hb_monitor_new(&no_poll, NULL, &m), HB_ERR_INVALID_ARGUMENT);
    CHECK(m == NULL);
    /* Phi with no spread and no estimate would kill every session at once. */
    hb_monitor_options zero_phi = o;
    zero_phi.detector = HB_DETECTOR_PHI;
    zero_phi.phi.min_std_deviation_ms = 0;
    zero_phi.phi.expected_interval_ms = 0;
    CHECK_ERR(hb_monitor_new(&zero_phi, NULL, &m), HB_ERR_INVALID_ARGUMENT);

    CHECK_ERR(hb_monitor_new(NULL, NULL, &m), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_monitor_new(&o, NULL, NULL), HB_ERR_INVALID_ARGUMENT);
    hb_monitor_options bad = o;
    bad.timeout_ms = 0;
    CHECK_ERR(hb_monitor_new(&bad, NULL, &m), HB_ERR_INVALID_ARGUMENT);
    bad = o;
    bad.max_missed_beats = 0;
    CHECK_ERR(hb_monitor_new(&bad, NULL, &m), HB_ERR_INVALID_ARGUMENT);
    bad = o;
    bad.detector = 7;
    CHECK_ERR(hb_monitor_new(&bad, NULL, &m), HB_ERR_INVALID_ARGUMENT);
    bad = o;
    bad.detector = HB_DETECTOR_PHI;
    bad.phi.warn_threshold = 9.0; /* above threshold */
    CHECK_ERR(hb_monitor_new(&bad, NULL, &m), HB_ERR_INVALID_ARGUMENT);
    CHECK(m == NULL); /* outputs only on success */

    /* A phi monitor with the defaults: status reports a phi. */
    bad = o;
    bad.detector = HB_DETECTOR_PHI;
    CHECK_OK(hb_monitor_new(&bad, NULL, &m));
    CHECK_OK(hb_monitor_register(m, "p", "phi"));
    hb_session_status st;
    CHECK_OK(hb_monitor_status(m, "p", &st));
    CHECK(!isnan(st.phi) && st.phi >= 0.0);
    hb_monitor_free(m);
    hb_monitor_free(NULL);
}

static void drain(hb_monitor *m) {
    hb_event ev;
    while (hb_monitor_next_event(m, 0, &ev) == HB_OK) {
        hb_event_free(&ev);
    }
}

int main(void) {
    test_options();

    struct counts c = {0};
    hb_monitor_options o;
    CHECK_OK(hb_monitor_options_default(&o));
    o.timeout_ms = 100;
    o.check_interval_ms = 50;
    o.max_missed_beats = 2;
    hb_monitor_callbacks cb = {on_warning, on_timeout, on_failure, &c};
    hb_monitor *m = NULL;
    CHECK_OK(hb_monitor_new(&o, &cb, &m));
    c.self = m;

    /* Nothing yet: the poll does not wait with timeout 0. */
    hb_event ev = {0};
    CHECK_ERR(hb_monitor_next_event(m, 0, &ev), HB_ERR_TIMEOUT);
    CHECK(ev.session_id == NULL); /* untouched */
    CHECK_ERR(hb_monitor_next_event(m, 20, &ev), HB_ERR_TIMEOUT);
    CHECK_ERR(hb_monitor_next_event(NULL, 0, &ev), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_monitor_next_event(m, 0, NULL), HB_ERR_INVALID_ARGUMENT);

    /* Register and its errors. */
    CHECK_OK(hb_monitor_register(m, "w1", "worker"));
    CHECK_ERR(hb_monitor_register(NULL, "w1", "worker"), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_monitor_register(m, NULL, "worker"), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_monitor_register(m, "w1", NULL), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_monitor_register(m, "\xff", "worker"), HB_ERR_INVALID_ARGUMENT);
    CHECK(hb_monitor_registered_count(m) == 1 && hb_monitor_healthy_count(m) == 1);
    CHECK(hb_last_error_message()[0] == '\0');
    CHECK(hb_monitor_registered_count(NULL) == 0 && hb_last_error_message()[0] != '\0');
    CHECK(hb_monitor_healthy_count(NULL) == 0 && hb_last_error_message()[0] != '\0');
    CHECK(hb_monitor_events_dropped(m) == 0);

    /* Status. */
    hb_session_status st;
    CHECK_OK(hb_monitor_status(m, "w1", &st));
    CHECK(st.missed_beats == 0 && !st.is_paused && st.is_healthy && !st.failed);
    CHECK(st.timeout_ms == 100 && st.max_missed_beats == 2 && isnan(st.phi));
    CHECK(st.time_to_death_ms >= 0 && st.seconds_since_beat >= 0.0);
    CHECK_ERR(hb_monitor_status(m, "nope", &st), HB_ERR_NOT_FOUND);
    CHECK_ERR(hb_monitor_status(m, "w1", NULL), HB_ERR_INVALID_ARGUMENT);

    /* Each session call: NOT_FOUND for an unknown id, INVALID_ARGUMENT for NULL. */
    CHECK_OK(hb_monitor_beat(m, "w1"));
    CHECK_ERR(hb_monitor_beat(m, "nope"), HB_ERR_NOT_FOUND);
    CHECK_ERR(hb_monitor_beat(m, NULL), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_monitor_beat(NULL, "w1"), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_monitor_pause(m, "nope"), HB_ERR_NOT_FOUND);
    CHECK_ERR(hb_monitor_pause(m, NULL), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_monitor_resume(m, "nope"), HB_ERR_NOT_FOUND);
    CHECK_ERR(hb_monitor_resume(m, "\xff"), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_monitor_fail(m, "nope"), HB_ERR_NOT_FOUND);
    CHECK_ERR(hb_monitor_fail(NULL, "w1"), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_monitor_unregister(m, "nope"), HB_ERR_NOT_FOUND);
    CHECK_ERR(hb_monitor_unregister(m, NULL), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_monitor_sweep(NULL), HB_ERR_INVALID_ARGUMENT);

    /* Pause and resume. */
    CHECK_OK(hb_monitor_pause(m, "w1"));
    CHECK_OK(hb_monitor_status(m, "w1", &st));
    CHECK(st.is_paused && st.time_to_death_ms == -1);
    CHECK_OK(hb_monitor_resume(m, "w1"));
    CHECK_OK(hb_monitor_resume(m, "w1")); /* not paused: nothing to do */
    CHECK_OK(hb_monitor_status(m, "w1", &st));
    CHECK(!st.is_paused && st.time_to_death_ms >= 0);

    /* Fail: the callback on this thread, the event, then a beat recovers. */
    CHECK_OK(hb_monitor_fail(m, "w1"));
    CHECK(atomic_load(&c.failures) == 1);
    CHECK_OK(hb_monitor_status(m, "w1", &st));
    CHECK(st.failed && !st.is_healthy);
    CHECK(hb_monitor_healthy_count(m) == 0);
    expect_event(m, HB_EVENT_FAILED, "w1", &ev);
    CHECK(ev.agent_type != NULL && strcmp(ev.agent_type, "worker") == 0);
    CHECK(ev.reason == HB_REMOVED_NONE);
    hb_event_free(&ev);
    CHECK(ev.session_id == NULL && ev.agent_type == NULL);
    hb_event_free(&ev); /* harmless twice */
    hb_event_free(NULL);
    CHECK_OK(hb_monitor_beat(m, "w1"));
    expect_event(m, HB_EVENT_RECOVERED, "w1", &ev);
    CHECK(ev.agent_type == NULL);
    hb_event_free(&ev);
    CHECK(hb_monitor_healthy_count(m) == 1);

    /* register_with: own settings, 0 meaning the monitor's; bad ones refused. */
    hb_register_options ro = {0};
    ro.timeout_ms = 60000;
    ro.grace_ms = 1000;
    CHECK_OK(hb_monitor_register_with(m, "w2", "cron", &ro));
    CHECK_OK(hb_monitor_status(m, "w2", &st));
    CHECK(st.timeout_ms == 60000 && st.max_missed_beats == 2);
    CHECK_OK(hb_monitor_register_with(m, "w3", "cron", NULL));
    ro.timeout_ms = 400ull * 24 * 3600 * 1000; /* over 365 days */
    CHECK_ERR(hb_monitor_register_with(m, "w4", "cron", &ro), HB_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hb_monitor_status(m, "w4", &st), HB_ERR_NOT_FOUND);
    CHECK(hb_monitor_registered_count(m) == 3);
    CHECK_OK(hb_monitor_unregister(m, "w2"));
    expect_event(m, HB_EVENT_REMOVED, "w2", &ev);
    CHECK(ev.reason == HB_REMOVED_UNREGISTERED);
    hb_event_free(&ev);
    CHECK_OK(hb_monitor_unregister(m, "w3"));
    drain(m);
    CHECK_ERR(hb_monitor_next_event(m, 0, &ev), HB_ERR_TIMEOUT);

    /* w1 goes silent: the sweeper warns, then times it out, by callback and by poll. */
    CHECK_OK(hb_monitor_start(m));
    CHECK_ERR(hb_monitor_start(m), HB_ERR_ALREADY_RUNNING);
    expect_event(m, HB_EVENT_WARNING, "w1", &ev);
    CHECK(ev.missed_beats == 1 && ev.agent_type == NULL && isnan(ev.phi));
    hb_event_free(&ev);
    expect_event(m, HB_EVENT_TIMED_OUT, "w1", &ev);
    CHECK(ev.missed_beats == 2 && strcmp(ev.agent_type, "worker") == 0);
    hb_event_free(&ev);
    expect_event(m, HB_EVENT_REMOVED, "w1", &ev);
    CHECK(ev.reason == HB_REMOVED_TIMED_OUT);
    hb_event_free(&ev);
    /* The callbacks run after the sweep's events are sent: wait for them. */
    for (int waited = 0; atomic_load(&c.timeouts) < 1 && waited < 5000; waited += 10) {
        sleep_ms(10);
    }
    CHECK(atomic_load(&c.warnings) == 1);
    CHECK(atomic_load(&c.timeouts) == 1);
    CHECK(atomic_load(&c.reentrant_ok) == 1 && atomic_load(&c.registered_seen) == 0);
    CHECK(hb_monitor_registered_count(m) == 0);

    CHECK_OK(hb_monitor_stop(m));
    CHECK_OK(hb_monitor_stop(m)); /* idempotent */
    CHECK_OK(hb_monitor_start(m)); /* and startable again */
    CHECK_OK(hb_monitor_sweep(m));
    CHECK(hb_monitor_events_dropped(m) == 0);
    hb_monitor_free(m); /* stops the running sweeper */

    printf("warnings=%d timeouts=%d failures=%d\n", atomic_load(&c.warnings),
           atomic_load(&c.timeouts), atomic_load(&c.failures));
    printf("PASS\n");
    return 0;
}
