/* Tiny assertion helpers for the C tests of the heartbeat C API. */
#ifndef HEARTBEAT_TEST_CHECK_H
#define HEARTBEAT_TEST_CHECK_H

#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "heartbeat.h"

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s:%d: check failed: %s (last error: \"%s\")\n", __FILE__, \
                    __LINE__, #cond, hb_last_error_message());                         \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

/* The call returns `code` and leaves a non-empty message. */
#define CHECK_ERR(call, code)                                                          \
    do {                                                                               \
        hb_result check_rc_ = (call);                                                  \
        if (check_rc_ != (code) || hb_last_error_message()[0] == '\0') {               \
            fprintf(stderr, "%s:%d: %s returned %d, wanted %d (last error: \"%s\")\n", \
                    __FILE__, __LINE__, #call, (int)check_rc_, (int)(code),            \
                    hb_last_error_message());                                          \
            exit(1);                                                                   \
        }                                                                              \
        printf("ok %s -> %d: %s\n", #call, (int)check_rc_, hb_last_error_message());  \
    } while (0)

/* The call succeeds and leaves an empty message. */
#define CHECK_OK(call)                                                                 \
    do {                                                                               \
        hb_result check_rc_ = (call);                                                  \
        if (check_rc_ != HB_OK || hb_last_error_message()[0] != '\0') {                \
            fprintf(stderr, "%s:%d: %s returned %d (last error: \"%s\")\n", __FILE__,  \
                    __LINE__, #call, (int)check_rc_, hb_last_error_message());         \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

static inline void sleep_ms(long ms) {
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

#endif
